# The deals API as a Rails-style Rack application would read it (Rack 2.2 on WEBrick): Rack::MethodOverride
# (a POST form's _method, or X-HTTP-Method-Override), and parameters merged the way ActionDispatch merges them:
# the body's (a JSON object, or a form) with the query's on top (query_parameters win), nested keys as in
# deals[][stage]=... Answers {"app":"rack","handler":...,"stages":[...]}: what it would store.
# Used by tests/test_differential.py; run: ruby deals.rb PORT
require "json"
require "rack"
require "rack/handler/webrick"

class Deals
  def call(env)
    req = Rack::Request.new(env)
    path = req.path_info.chomp("/")
    params = body_params(req).merge(req.GET)
    case [req.request_method, path]
    in ["POST", "/api/v1/deals"] then answer("create", [params])
    in ["POST", "/api/v1/deals/import"] then answer("import", Array(params["deals"]))
    in ["PATCH" | "PUT", %r{\A/api/v1/deals/[^/]+\z}] then answer("update", [params])
    else [404, { "content-type" => "application/json" }, [JSON.generate(app: "rack", handler: nil)]]
    end
  rescue JSON::ParserError
    [400, { "content-type" => "application/json" }, [JSON.generate(app: "rack", handler: nil)]]
  end

  private

  def body_params(req)
    if req.media_type.to_s.end_with?("json")
      body = JSON.parse(req.body.read)
      body.is_a?(Hash) ? body : {}
    else
      req.POST
    end
  end

  def answer(handler, deals)
    stages = deals.select { |d| d.is_a?(Hash) && d.key?("stage") }.map { |d| d["stage"] }
    [200, { "content-type" => "application/json" }, [JSON.generate(app: "rack", handler: handler, stages: stages)]]
  end
end

app = Rack::Builder.new do
  use Rack::MethodOverride
  map("/") { run ->(env) { env["PATH_INFO"] == "/" ? [200, {}, ["ok"]] : Deals.new.call(env) } }
end
Rack::Handler::WEBrick.run(app, Host: "127.0.0.1", Port: Integer(ARGV[0]), AccessLog: [],
                           Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN))
