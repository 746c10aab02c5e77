package cache

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
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
type router struct{ set *Set }

func (r *router) forPort(own *Cache) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { r.serve(w, req, own) })
}

// aliases are names clients use for a registry that images call otherwise.
var aliases = map[string]string{
	"index.docker.io":      "docker.io",
	"registry-1.docker.io": "docker.io",
}

func (r *router) byHost(host string) *Cache {
	if a, ok := aliases[host]; ok {
		host = a
	}
	for _, c := range r.set.caches {
		if c != nil && c.up.Host == host {
			return c
		}
	}
	return nil
}

func (r *router) serve(w http.ResponseWriter, req *http.Request, own *Cache) {
	target := own
	if !own.access.Allowed(req.RemoteAddr) {
		own.engine.ServeHTTP(w, req) // refused there, with the reason
		return
	}
	if q := req.URL.Query(); q.Has("ns") {
		ns := q.Get("ns")
		target = r.byHost(strings.ToLower(ns))
		if target == nil {
			r.refuse(w, ns)
			return
		}
		// Never forwarded: the engine builds its upstream requests from the
		// path alone, and some registries answer 400 to an ns they do not
		// expect.
		q.Del("ns")
		req.URL.RawQuery = q.Encode()
	} else if rest, ok := strings.CutPrefix(req.URL.Path, "/v2/"); ok {
		if first, tail, ok := strings.Cut(rest, "/"); ok && strings.ContainsAny(first, ".:") {
			if c := r.byHost(first); c != nil {
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
func (r *router) refuse(w http.ResponseWriter, ns string) {
	var hosts []string
	for _, c := range r.set.caches {
		if c != nil {
			hosts = append(hosts, c.up.Host)
		}
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
