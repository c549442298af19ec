"""Support code for the tests, shared with bench/: ports, real servers, upstreams, proxies."""
