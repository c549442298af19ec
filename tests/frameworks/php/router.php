<?php
// The deals API as a Laravel-style PHP application reads it, on Symfony HttpFoundation (Debian's package) under
// PHP's built-in server: the method from Request::getMethod() with the parameter override enabled (a POST's
// X-HTTP-Method-Override header, else "_method" from the input, else from the query), the input of a JSON request
// being its JSON object (Laravel's Request::createFromBase), and values read with Request::get() (attributes,
// then the query, then the input). Answers {"app":"php","handler":...,"stages":[...]}: what it would store.
// Used by tests/test_differential.py; run: php -S 127.0.0.1:PORT router.php
require_once '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';

use Symfony\Component\HttpFoundation\InputBag;
use Symfony\Component\HttpFoundation\JsonResponse;
use Symfony\Component\HttpFoundation\Request;

Request::enableHttpMethodParameterOverride();
$request = Request::createFromGlobals();
$json = str_contains((string) $request->headers->get('Content-Type'), 'json');
if ($json) {
    $decoded = json_decode($request->getContent(), true);
    $request->request = new InputBag(is_array($decoded) ? $decoded : []);
}
$path = rtrim($request->getPathInfo(), '/');
$method = $request->getMethod();

function stages(array $deals): array {
    $out = [];
    foreach ($deals as $deal) {
        if (is_array($deal) && array_key_exists('stage', $deal)) {
            $out[] = $deal['stage'];
        }
    }
    return $out;
}

function field(Request $request, string $name) {
    foreach ([$request->attributes, $request->query, $request->request] as $bag) {
        if ($bag->has($name)) {
            return $bag->all()[$name];
        }
    }
    return null;
}

if ($path === '') {
    echo 'ok';
    return true;
}
$handler = null;
$stages = [];
if ($method === 'POST' && $path === '/api/v1/deals') {
    $handler = 'create';
    $stage = field($request, 'stage');
    $stages = $stage === null ? [] : [$stage];
} elseif ($method === 'POST' && $path === '/api/v1/deals/import') {
    $handler = 'import';
    $deals = field($request, 'deals');
    $stages = is_array($deals) ? stages($deals) : [];
} elseif (in_array($method, ['PATCH', 'PUT'], true) && preg_match('#^/api/v1/deals/[^/]+$#', $path)) {
    $handler = 'update';
    $stage = field($request, 'stage');
    $stages = $stage === null ? [] : [$stage];
}
(new JsonResponse(['app' => 'php', 'handler' => $handler, 'stages' => $stages], $handler ? 200 : 404))->send();
