package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
)

// manifestAccept is every manifest format a pull may meet. Upstream is always
// asked with all of them, so one fetch serves every client.
var manifestAccept = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

const maxManifestSize = 4 << 20 // the distribution spec's recommended limit

type manifest struct {
	digest    digest.Digest
	mediaType string
	payload   []byte
}

// serveManifest answers GET and HEAD of /v2/<name>/manifests/<reference>.
func (c *Cache) serveManifest(w http.ResponseWriter, r *http.Request, rt route) {
	ctx := r.Context()
	m, hit, err := c.manifest(ctx, rt)
	if err != nil {
		if err == errStrict {
			c.notCached(w, rt)
			return
		}
		c.note(w, missesOf, 1)
		c.writeError(w, err)
		return
	}
	if hit {
		c.note(w, hitsOf, 1)
	} else {
		c.note(w, missesOf, 1)
	}
	h := w.Header()
	h.Set("Content-Type", m.mediaType)
	h.Set("Docker-Content-Digest", m.digest.String())
	h.Set("Etag", `"`+m.digest.String()+`"`)
	h.Set("Content-Length", strconv.Itoa(len(m.payload)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(m.payload)
	}
}

var errStrict = fmt.Errorf("not cached in strict mode")

// manifest finds a manifest in storage or upstream, by the mode's rules.
func (c *Cache) manifest(ctx context.Context, rt route) (m manifest, hit bool, err error) {
	if rt.isDigest() {
		d := digest.Digest(rt.ref)
		if mt, payload, ok := c.storedManifest(d); ok {
			m = manifest{d, mt, payload}
			if _, linked := c.store.linked(rt.name, d); linked {
				return m, true, nil
			}
			if c.cfg.Mode == Strict {
				return m, false, errStrict
			}
			// Stored for another repository: ask upstream whether this one
			// has it (a HEAD, which Docker Hub does not count as a pull).
			if _, err := c.headManifest(ctx, rt, c.cfg.HeaderTimeout); err != nil {
				return m, false, err
			}
			_ = c.store.link(rt.name, d, int64(len(payload)))
			return m, true, nil
		}
		if c.cfg.Mode == Strict {
			return m, false, errStrict
		}
		m, err = c.fetchManifest(rt)
		return m, false, err
	}
	d, checked, ok := c.store.tag(rt.name, rt.ref)
	if ok {
		if mt, payload, found := c.storedManifest(d); found {
			m = manifest{d, mt, payload}
		} else {
			ok = false
		}
	}
	switch {
	case ok && c.cfg.Mode != Online:
		return m, true, nil
	case c.cfg.Mode == Strict:
		return m, false, errStrict
	case !ok:
		m, err = c.fetchManifest(rt)
		return m, false, err
	case c.cfg.TagTTL > 0 && time.Since(checked) < c.cfg.TagTTL:
		return m, true, nil
	case c.up.isDown():
		c.log.Debug("tag served from cache: upstream recently unreachable", "ref", rt.String())
		return m, true, nil
	}
	// Revalidate: one HEAD, bounded, shared by every request for the tag.
	v, err, _ := c.flights.Do("HEAD "+rt.String(), func() (any, error) {
		return c.headManifest(c.ctx, rt, c.cfg.RevalidateTimeout)
	})
	if err != nil {
		c.log.Warn("revalidating a tag failed; serving the cached copy", "ref", rt.String(), "error", err)
		return m, true, nil
	}
	if nd := v.(digest.Digest); nd == "" || nd == d {
		if err := c.store.touchTag(rt.name, rt.ref, time.Now()); err != nil {
			c.log.Warn("recording a tag's revalidation", "ref", rt.String(), "error", err)
		}
		return m, true, nil
	} else {
		nm, err := c.fetchManifest(route{kind: kindManifest, name: rt.name, ref: nd.String()})
		if err != nil {
			c.log.Warn("fetching a tag's new manifest failed; serving the cached copy", "ref", rt.String(), "error", err)
			return m, true, nil
		}
		if err := c.store.setTag(rt.name, rt.ref, nd); err != nil {
			c.log.Warn("recording a tag", "ref", rt.String(), "error", storageError(c.store.root, err))
		}
		return nm, false, nil
	}
}

// headManifest asks upstream for a manifest's digest.
func (c *Cache) headManifest(ctx context.Context, rt route, timeout time.Duration) (digest.Digest, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.up.do(ctx, http.MethodHead, rt.name, "manifests/"+rt.ref, manifestAccept)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", c.up.statusError(resp, "manifest "+rt.String())
	}
	drain(resp.Body)
	d, _ := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	return d, nil
}

// fetchManifest GETs a manifest once for every request waiting for it,
// verifies it, stores it, links what it names to the repository, and points
// the tag at it.
func (c *Cache) fetchManifest(rt route) (manifest, error) {
	v, err, shared := c.flights.Do("GET "+rt.String(), func() (any, error) {
		// Processes on this storage fetching the same manifest make one GET
		// between them: the others wait for the lock (as long as a fetch may
		// take), then find the manifest stored, or the failure recorded.
		start := time.Now()
		waitCtx, cancelWait := context.WithTimeout(c.ctx, c.cfg.HeaderTimeout+c.cfg.StallTimeout+time.Second)
		unlock, waited := c.lockManifest(waitCtx, rt)
		cancelWait()
		defer unlock()
		if m, ok, err := c.fetchedSince(rt, start, waited); ok {
			c.stats.coalesced.Add(1)
			return m, err
		}
		// Instances of a fleet do the same through it.
		claimed := false
		if c.cfg.Fleet != nil {
			m, ok, held, err := c.manifestFromFleet(rt)
			if ok {
				c.stats.coalesced.Add(1)
				return m, err
			}
			claimed = held
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.HeaderTimeout+c.cfg.StallTimeout)
		defer cancel()
		m, err := c.getRemoteManifest(ctx, rt)
		var ue *upstreamError
		if errors.As(err, &ue) && ue.status >= 500 {
			c.shareFailure(rt, ue)
		}
		if claimed {
			c.manifestToFleet(rt, m, err)
		}
		return m, err
	})
	if shared {
		c.stats.coalesced.Add(1)
	}
	if err != nil {
		return manifest{}, err
	}
	return v.(manifest), nil
}

// getRemoteManifest GETs a manifest from upstream, verifies and stores it.
func (c *Cache) getRemoteManifest(ctx context.Context, rt route) (manifest, error) {
	resp, err := c.up.do(ctx, http.MethodGet, rt.name, "manifests/"+rt.ref, manifestAccept)
	if err != nil {
		return manifest{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return manifest{}, c.up.statusError(resp, "manifest "+rt.String())
	}
	payload, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	drain(resp.Body)
	if err != nil {
		return manifest{}, c.up.transportError(ctx, nil, err)
	}
	if len(payload) > maxManifestSize {
		return manifest{}, &upstreamError{host: c.cfg.Host, status: http.StatusBadGateway, code: "MANIFEST_INVALID",
			msg: fmt.Sprintf("upstream %s sent manifest %s larger than %d bytes", c.cfg.Host, rt.String(), maxManifestSize)}
	}
	d := digest.FromBytes(payload)
	if want := resp.Header.Get("Docker-Content-Digest"); (rt.isDigest() && d.String() != rt.ref) || (want != "" && want != d.String() && digest.Digest(want).Algorithm() == digest.SHA256) {
		return manifest{}, &upstreamError{host: c.cfg.Host, status: http.StatusBadGateway, code: "DIGEST_INVALID",
			msg: fmt.Sprintf("upstream %s sent manifest %s with digest %s: not stored", c.cfg.Host, rt.String(), d)}
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "" || mt == "application/json" || mt == "text/plain" {
		mt = sniffMediaType(payload)
	}
	m := manifest{d, mt, payload}
	if err := c.storeManifest(rt, m); err != nil {
		// Served anyway: the client need not fail for the cache's disk.
		c.log.Warn("storing a manifest", "ref", rt.String(), "error", err)
	}
	return m, nil
}

// fleetManifestTTL is how long a manifest one instance of a fleet fetched is
// served to the others without asking upstream: the span of one CI wave's
// concurrent cold pulls; a tag, never longer than the tag TTL. A failure is
// shared for failureTTL, long enough for the instances waiting on it.
const (
	fleetManifestTTL = time.Minute
	failureTTL       = 5 * time.Second
)

func (c *Cache) storeManifest(rt route, m manifest) error {
	s := c.store
	if err := s.putManifest(m.digest, m.mediaType, m.payload); err != nil {
		return storageError(s.root, err)
	}
	if err := s.link(rt.name, m.digest, int64(len(m.payload))); err != nil {
		return storageError(s.root, err)
	}
	var body struct {
		Config    *descriptor  `json:"config"`
		Layers    []descriptor `json:"layers"`
		Manifests []descriptor `json:"manifests"`
	}
	if json.Unmarshal(m.payload, &body) == nil {
		refs := append(body.Layers, body.Manifests...)
		if body.Config != nil {
			refs = append(refs, *body.Config)
		}
		if len(refs) > maxLinksPerManifest {
			// A huge index must not become tens of thousands of files;
			// what is left unlinked costs one HEAD when first asked for.
			refs = refs[:maxLinksPerManifest]
		}
		for _, ref := range refs {
			if d, err := digest.Parse(ref.Digest); err == nil && d.Algorithm() == digest.SHA256 {
				if err := s.link(rt.name, d, ref.Size); err != nil {
					return storageError(s.root, err)
				}
			}
		}
	}
	if !rt.isDigest() {
		if err := s.setTag(rt.name, rt.ref, m.digest); err != nil {
			return storageError(s.root, err)
		}
	}
	return nil
}

// maxLinksPerManifest bounds the links one manifest makes.
const maxLinksPerManifest = 1024

type descriptor struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// sniffMediaType reads a manifest's own mediaType field, or tells an index
// from an image manifest by its shape (OCI allows leaving the field out).
func sniffMediaType(payload []byte) string {
	var b struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	_ = json.Unmarshal(payload, &b)
	switch {
	case b.MediaType != "":
		return b.MediaType
	case b.Manifests != nil:
		return "application/vnd.oci.image.index.v1+json"
	}
	return "application/vnd.oci.image.manifest.v1+json"
}
