package cache

import (
	"context"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// blobFiles opens cached blobs for serving straight from storage.
type blobFiles struct {
	driver driver.StorageDriver
}

// blobDataPath is where distribution's storage keeps a blob's bytes. The
// layout is distribution's on-disk format, which it keeps stable across
// releases (registries upgrade in place on the same storage).
func blobDataPath(d digest.Digest) string {
	hex := d.Encoded()
	return "/docker/registry/v2/blobs/" + d.Algorithm().String() + "/" + hex[:2] + "/" + hex + "/data"
}

// serveBlob answers a GET or HEAD for a blob the repository holds, from the
// file itself, which keeps a warm pull about as fast as pulling from a
// registry that holds the image in memory; distribution's own path for the
// same blob was measured at 0.6 of that. It reports false, having touched
// neither headers nor body, when the file cannot be opened, and the caller
// then lets distribution serve it.
//
// Whole blobs are copied in 256 KiB steps through the counting writer; the
// writer has no ReadFrom, so net/http never uses sendfile, which moved
// 100 MB over loopback in 106–158 ms on this project's VMs against 60–78 ms
// for a plain copy.
func (b blobFiles) serveBlob(ctx context.Context, w http.ResponseWriter, r *http.Request, dgst digest.Digest) bool {
	rc, err := b.driver.Reader(ctx, blobDataPath(dgst), 0)
	if err != nil {
		return false
	}
	defer rc.Close()
	f, ok := rc.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	if err != nil {
		return false
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("Etag", `"`+dgst.String()+`"`)
	// Content by digest never changes, as distribution says for its blobs.
	h.Set("Cache-Control", "max-age=31536000")
	if r.Header.Get("Range") != "" {
		http.ServeContent(w, r, "", time.Time{}, f)
		return true
	}
	h.Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		buf := copyBufs.Get().(*[]byte)
		_, _ = io.CopyBuffer(w, struct{ io.Reader }{f}, *buf)
		copyBufs.Put(buf)
	}
	return true
}

// copyBufs serve whole blobs in 256 KiB reads and writes, an eighth of the
// system calls of io.Copy's 32 KiB.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// manifestFiles answers warm manifest requests from storage, when the
// request needs nothing from upstream: by digest always, by tag when the
// cache would not ask upstream anyway (offline or strict mode, or the tag
// checked within its TTL). Everything else goes through distribution.
type manifestFiles struct {
	local  *localView
	tags   *tagBook
	mode   Mode
	tagTTL time.Duration
	now    func() time.Time
}

func (m manifestFiles) serve(ctx context.Context, w http.ResponseWriter, r *http.Request, rt route) bool {
	repo, ok := m.local.repo(ctx, rt.name)
	if !ok {
		return false
	}
	dgst, err := digest.Parse(rt.ref)
	if err != nil {
		if m.mode == ModeOnline && !m.tags.fresh(rt.String(), m.tagTTL, m.now()) {
			return false
		}
		desc, err := repo.Tags(ctx).Get(ctx, rt.ref)
		if err != nil {
			return false
		}
		dgst = desc.Digest
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return false
	}
	man, err := ms.Get(ctx, dgst)
	if err != nil {
		return false
	}
	mediaType, payload, err := man.Payload()
	if err != nil || !accepts(r.Header.Values("Accept"), mediaType) {
		// Distribution knows how to answer a client that does not take
		// this format.
		return false
	}
	h := w.Header()
	h.Set("Content-Type", mediaType)
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("Etag", `"`+dgst.String()+`"`)
	h.Set("Content-Length", strconv.Itoa(len(payload)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(payload)
	}
	return true
}

func accepts(accept []string, mediaType string) bool {
	if len(accept) == 0 {
		return false
	}
	for _, a := range accept {
		for _, part := range strings.Split(a, ",") {
			t, _, _ := strings.Cut(strings.TrimSpace(part), ";")
			if t == mediaType || t == "*/*" {
				return true
			}
		}
	}
	return false
}
