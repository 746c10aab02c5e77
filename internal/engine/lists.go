package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
)

// maxListSize bounds a tag list or referrers index taken from upstream.
const maxListSize = 4 << 20

// serveList answers GET and HEAD of /v2/<name>/tags/list (with the spec's n
// and last) and /v2/<name>/referrers/<digest> (with artifactType). Online,
// upstream is asked and its answer kept; when upstream cannot answer (down,
// 5xx, offline mode) the last good answer is served; in strict mode a tag
// list is made from the tags stored here, and referrers from what was kept.
func (c *Cache) serveList(w http.ResponseWriter, r *http.Request, rt route) {
	q := url.Values{}
	in := r.URL.Query()
	var rest string
	if rt.kind == kindTags {
		for _, k := range []string{"n", "last"} {
			if v := in.Get(k); v != "" {
				q.Set(k, v)
			}
		}
		if n := q.Get("n"); n != "" {
			if v, err := strconv.Atoi(n); err != nil || v < 0 {
				writeRegistryError(w, http.StatusBadRequest, "UNSUPPORTED", fmt.Sprintf("n=%q: want a number of tags, 0 or more", trunc(n)))
				return
			}
		}
		rest = "tags/list"
	} else {
		if v := in.Get("artifactType"); v != "" {
			q.Set("artifactType", v)
		}
		rest = "referrers/" + rt.ref
	}
	if enc := q.Encode(); enc != "" {
		rest += "?" + enc
	}
	path := c.listPath(rt, q)
	if c.cfg.Mode == Strict {
		c.serveKeptList(w, r, rt, q, path, nil)
		return
	}
	if c.cfg.Mode == Offline {
		if _, err := os.Stat(path); err == nil {
			c.serveKeptList(w, r, rt, q, path, nil)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.HeaderTimeout)
	defer cancel()
	resp, err := c.up.do(ctx, http.MethodGet, rt.name, rest, []string{"application/json", "application/vnd.oci.image.index.v1+json"})
	if err != nil {
		c.serveKeptList(w, r, rt, q, path, err)
		return
	}
	if resp.StatusCode != http.StatusOK {
		ue := c.up.statusError(resp, rt.what())
		if ue.status >= 500 || ue.status == http.StatusTooManyRequests {
			c.serveKeptList(w, r, rt, q, path, ue)
			return
		}
		c.writeError(w, ue)
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListSize+1))
	drain(resp.Body)
	if err != nil || len(body) > maxListSize || !json.Valid(body) {
		c.serveKeptList(w, r, rt, q, path, &upstreamError{host: c.cfg.Host, status: http.StatusBadGateway, code: "UNAVAILABLE",
			msg: fmt.Sprintf("upstream %s sent a %s that is not JSON of at most %d bytes", c.cfg.Host, rt.what(), maxListSize)})
		return
	}
	if rt.kind == kindReferrers && q.Get("artifactType") != "" && resp.Header.Get("OCI-Filters-Applied") == "" {
		body = filterReferrers(body, q.Get("artifactType"))
	}
	if err := c.store.writeFile(path, body); err != nil {
		c.log.Warn("keeping a list", "what", rt.what(), "error", storageError(c.store.root, err))
	}
	c.note(w, missesOf, 1)
	writeList(w, r, rt, q, body, resp.Header.Get("Link"))
}

func (rt route) what() string {
	if rt.kind == kindTags {
		return "tag list of " + rt.name
	}
	return "referrers of " + rt.name + "@" + rt.ref
}

// listPath is where the answer to one list request is kept.
func (c *Cache) listPath(rt route, q url.Values) string {
	sum := sha256.Sum256([]byte(q.Encode()))
	key := hex.EncodeToString(sum[:8])
	if rt.kind == kindTags {
		return c.store.repoPath(rt.name, "_lists", "tags-"+key)
	}
	return c.store.repoPath(rt.name, "_lists", "referrers-"+strings.TrimPrefix(rt.ref, "sha256:")+"-"+key)
}

// serveKeptList answers from what was kept (or, for a tag list in strict
// mode, from the tags stored here); cause is why upstream was not used.
func (c *Cache) serveKeptList(w http.ResponseWriter, r *http.Request, rt route, q url.Values, path string, cause error) {
	if rt.kind == kindTags && c.cfg.Mode == Strict {
		c.note(w, hitsOf, 1)
		writeList(w, r, rt, q, c.storedTags(rt.name, q), "")
		return
	}
	body, err := os.ReadFile(path)
	if err == nil && json.Valid(body) {
		if cause != nil {
			c.log.Warn("upstream could not answer; serving the list kept from its last answer", "what", rt.what(), "error", cause)
		}
		c.note(w, hitsOf, 1)
		writeList(w, r, rt, q, body, "")
		return
	}
	if cause != nil {
		c.note(w, missesOf, 1)
		c.writeError(w, cause)
		return
	}
	c.note(w, notCachedOf, 1)
	writeRegistryError(w, http.StatusNotFound, "NAME_UNKNOWN",
		fmt.Sprintf("%s/%s: the %s is not kept here and the cache does not ask upstream (mode %s)", c.cfg.Host, rt.name, rt.what(), c.cfg.Mode))
}

// storedTags is the spec's tag list of the tags stored for a repository,
// in lexical order, with n and last applied.
func (c *Cache) storedTags(name string, q url.Values) []byte {
	ents, _ := os.ReadDir(c.store.repoPath(name, "_tags"))
	tags := []string{}
	for _, e := range ents {
		if e.Type().IsRegular() {
			tags = append(tags, e.Name())
		}
	}
	sort.Strings(tags)
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(tags, last)
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	if n, err := strconv.Atoi(q.Get("n")); err == nil && n < len(tags) {
		tags = tags[:n]
	}
	b, _ := json.Marshal(map[string]any{"name": name, "tags": tags})
	return b
}

func writeList(w http.ResponseWriter, r *http.Request, rt route, q url.Values, body []byte, link string) {
	h := w.Header()
	if rt.kind == kindTags {
		h.Set("Content-Type", "application/json")
	} else {
		h.Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		if q.Get("artifactType") != "" {
			h.Set("OCI-Filters-Applied", "artifactType")
		}
	}
	if link != "" && strings.HasPrefix(link, "<") && !strings.Contains(link, "://") {
		h.Set("Link", link) // a path on this registry: the same one here
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// filterReferrers keeps the manifests of one artifact type in a referrers
// index, for an upstream that did not apply the filter.
func filterReferrers(body []byte, artifactType string) []byte {
	var idx map[string]json.RawMessage
	if json.Unmarshal(body, &idx) != nil {
		return body
	}
	var ms []map[string]any
	if json.Unmarshal(idx["manifests"], &ms) != nil {
		return body
	}
	kept := []map[string]any{}
	for _, m := range ms {
		if m["artifactType"] == artifactType {
			kept = append(kept, m)
		}
	}
	b, err := json.Marshal(kept)
	if err != nil {
		return body
	}
	idx["manifests"] = b
	out, err := json.Marshal(idx)
	if err != nil {
		return body
	}
	return out
}
