package cache

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
)

// HeaderNamespace is the distribution spec's answer of a proxy to a request
// routed by its ns parameter: the registry the content came from.
const HeaderNamespace = "OCI-Namespace"

// router sends a request to the cache of the registry it names: containerd's
// ?ns=<registry> (sent to every mirror since containerd 1.4, and what Talos's
// "*" mirror becomes), else a first path segment that is a cached registry
// (/v2/docker.io/library/alpine/…, for clients that send no ns: the Docker
// daemon, older skopeo), else the cache of the port it came in on. Every
// port is thus one endpoint for every registry of the set.
type router struct {
	set *Set
	// hosts is every cache of the set by registry host, once all started:
	// until then a request goes to the port's own cache.
	hosts atomic.Pointer[map[string]*Cache]
}

// ready makes every cache of the set reachable from every port.
func (r *router) ready() {
	m := map[string]*Cache{}
	for _, c := range r.set.caches {
		m[c.up.Host] = c
	}
	r.hosts.Store(&m)
}

func (r *router) forPort(own *Cache) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { r.serve(w, req, own) })
}

// aliases are names clients use for a registry that images call otherwise.
var aliases = map[string]string{
	"index.docker.io":      "docker.io",
	"registry-1.docker.io": "docker.io",
}

// byHost is the cache for a registry host, nil when the set has none;
// while the set starts, own stands for all.
func (r *router) byHost(host string, own *Cache) *Cache {
	if a, ok := aliases[host]; ok {
		host = a
	}
	m := r.hosts.Load()
	if m == nil {
		if own.up.Host == host {
			return own
		}
		return nil
	}
	return (*m)[host]
}

func (r *router) serve(w http.ResponseWriter, req *http.Request, own *Cache) {
	target := own
	if !own.access.Allowed(req.RemoteAddr) {
		own.engine.ServeHTTP(w, req) // refused there, with the reason
		return
	}
	if q := req.URL.Query(); q.Has("ns") {
		ns := q.Get("ns")
		target = r.byHost(strings.ToLower(ns), own)
		if target == nil {
			own.engine.Unrouted(req.RemoteAddr)
			r.refuse(w, ns, own)
			return
		}
		// Never forwarded: the engine builds its upstream requests from the
		// path alone, and some registries answer 400 to an ns they do not
		// expect.
		q.Del("ns")
		req.URL.RawQuery = q.Encode()
	} else if rest, ok := strings.CutPrefix(req.URL.Path, "/v2/"); ok {
		if first, tail, ok := strings.Cut(rest, "/"); ok && strings.ContainsAny(first, ".:") {
			if c := r.byHost(first, own); c != nil {
				target = c
				req.URL.Path = "/v2/" + tail
				req.URL.RawPath = ""
			}
		}
	}
	if req.URL.Path != "/v2/" && req.URL.Path != "/v2" && strings.HasPrefix(req.URL.Path, "/v2/") {
		w.Header().Set(HeaderNamespace, target.up.Host)
	}
	target.engine.ServeHTTP(w, req)
}

// refuse answers a request for a registry the set does not cache, without
// any upstream request: a cache must not fetch from wherever a client says.
func (r *router) refuse(w http.ResponseWriter, ns string, own *Cache) {
	var hosts []string
	if m := r.hosts.Load(); m != nil {
		for h := range *m {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		hosts = []string{own.up.Host}
	}
	sort.Strings(hosts)
	if len(ns) > 80 {
		ns = ns[:80] + "…"
	}
	msg := fmt.Sprintf("registry %q is not cached here (this endpoint caches %s); add it with `pullthrough up --upstream %s=https://…` or cache.WithUpstreams",
		ns, strings.Join(hosts, ", "), ns)
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": "NAME_UNKNOWN", "message": msg}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write(append(body, '\n'))
}
