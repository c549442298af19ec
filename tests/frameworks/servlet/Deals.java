// The deals API as a servlet application would write it, on embedded Tomcat 10: Jackson binding JSON to a bean
// with ACCEPT_CASE_INSENSITIVE_PROPERTIES (common in legacy Spring apps), routing on getPathInfo() (Tomcat drops
// ";" path parameters and normalizes dot segments), and Spring's HiddenHttpMethodFilter rule: a POST with a
// "_method" request parameter (query or form) is dispatched as that method; a form binds its "stage" parameter.
// Answers {"app":"servlet","handler":...,"stages":[...]}: what it would store. Used by tests/test_differential.py.
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.MapperFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.apache.catalina.Context;
import org.apache.catalina.connector.Connector;
import org.apache.catalina.startup.Tomcat;

public class Deals extends HttpServlet {
    public static class Deal { public Object stage; }
    public static class Batch { public List<Deal> deals; }

    private static final ObjectMapper JSON = JsonMapper.builder()
            .enable(MapperFeature.ACCEPT_CASE_INSENSITIVE_PROPERTIES)
            .disable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES)
            .build();
    private static final List<String> ALLOWED = List.of("PUT", "DELETE", "PATCH");

    @Override
    protected void service(HttpServletRequest req, HttpServletResponse res) throws IOException {
        String method = req.getMethod();
        if ("POST".equals(method)) {  // HiddenHttpMethodFilter
            String param = req.getParameter("_method");
            if (param != null && !param.isEmpty() && ALLOWED.contains(param.toUpperCase(Locale.ENGLISH))) {
                method = param.toUpperCase(Locale.ENGLISH);
            }
        }
        String path = req.getPathInfo() == null ? "/" : req.getPathInfo();
        if (path.endsWith("/") && path.length() > 1) {
            path = path.substring(0, path.length() - 1);
        }
        try {
            if (path.equals("/deals") && method.equals("POST")) {
                answer(res, "create", stages(read(req)));
            } else if (path.equals("/deals/import") && method.equals("POST")) {
                Batch batch = JSON.readValue(req.getInputStream(), Batch.class);
                answer(res, "import", stages(batch.deals == null ? new Deal[0] : batch.deals.toArray(new Deal[0])));
            } else if (path.matches("/deals/[^/]+") && (method.equals("PATCH") || method.equals("PUT"))) {
                answer(res, "update", stages(read(req)));
            } else {
                res.setStatus(404);
                res.setContentType("application/json");
                res.getWriter().write("{\"app\":\"servlet\",\"handler\":null}");
            }
        } catch (IOException e) {
            res.setStatus(400);
            res.setContentType("application/json");
            res.getWriter().write("{\"app\":\"servlet\",\"handler\":null,\"error\":\"bad json\"}");
        }
    }

    /** A JSON body through Jackson; a form as Spring's data binding reads it (the "stage" parameter). */
    private static Deal read(HttpServletRequest req) throws IOException {
        String type = req.getContentType() == null ? "" : req.getContentType().toLowerCase(Locale.ENGLISH);
        if (type.startsWith("application/x-www-form-urlencoded")) {
            Deal deal = new Deal();
            deal.stage = req.getParameter("stage");
            return deal;
        }
        return JSON.readValue(req.getInputStream(), Deal.class);
    }

    private static List<Object> stages(Deal... deals) {
        List<Object> out = new ArrayList<>();
        for (Deal deal : deals) {
            if (deal != null && deal.stage != null) {
                out.add(deal.stage);
            }
        }
        return out;
    }

    private static void answer(HttpServletResponse res, String handler, List<Object> stages) throws IOException {
        res.setContentType("application/json");
        res.getWriter().write(JSON.writeValueAsString(Map.of("app", "servlet", "handler", handler, "stages", stages)));
    }

    public static void main(String[] args) throws Exception {
        Tomcat tomcat = new Tomcat();
        tomcat.setBaseDir(args[1]);
        Connector connector = new Connector();
        connector.setPort(Integer.parseInt(args[0]));
        connector.setProperty("address", "127.0.0.1");
        connector.setProperty("parseBodyMethods", "POST,PUT,PATCH");
        tomcat.setConnector(connector);
        Context root = tomcat.addContext("", null);
        Tomcat.addServlet(root, "health", new HttpServlet() {
            @Override
            protected void doGet(HttpServletRequest req, HttpServletResponse res) throws IOException {
                res.getWriter().write("ok");
            }
        });
        root.addServletMappingDecoded("", "health");
        Tomcat.addServlet(root, "deals", new Deals());
        root.addServletMappingDecoded("/api/v1/*", "deals");
        tomcat.start();
        tomcat.getServer().await();
    }
}
