package engine

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"
)

// Fleet is how instances of a cache tier share blobs: shared storage for
// what is stored, and one claim per blob for who downloads it.
type Fleet interface {
	// Blob returns a reader of a blob from the fleet (ok true): its shared
	// storage, or the fill of the instance that holds the blob's claim. With
	// ok false, this instance now holds the claim and is to fetch the blob
	// from upstream, then call Done. An error means the fleet cannot be
	// asked: the instance then fetches on its own.
	Blob(ctx context.Context, d digest.Digest) (body io.ReadCloser, size int64, ok bool, err error)
	// Done ends this instance's claim on a blob: path is the verified blob
	// to share, or "" when the download failed.
	Done(ctx context.Context, d digest.Digest, path string)
	// Manifest returns what another instance recorded for a manifest key
	// (repository and reference) within the record's lifetime (ok true),
	// waiting while another instance holds the key's claim. With ok false
	// this instance now holds the claim, fetches the manifest, and calls
	// ManifestDone. An error means the fleet cannot be asked: the instance
	// then fetches on its own.
	Manifest(ctx context.Context, key string) (record []byte, ok bool, err error)
	// ManifestDone ends this instance's claim on a manifest key, leaving
	// record for the others for ttl (nil: nothing to share).
	ManifestDone(ctx context.Context, key string, record []byte, ttl time.Duration)
	// Discard removes the fleet's stored copy of a blob, found damaged (its
	// size or digest do not match): the next fetch goes to the origin.
	Discard(ctx context.Context, d digest.Digest)
}

// FillPath serves a blob being downloaded by this instance to a peer of the
// fleet: GET FillPath + digest streams the fill as it grows (or the stored
// blob); anything else is 404.
const FillPath = "/_pullthrough/fill/"

func (c *Cache) servePeer(w http.ResponseWriter, r *http.Request) {
	d, err := digest.Parse(r.URL.Path[len(FillPath):])
	if err != nil || d.Algorithm() != digest.SHA256 {
		writeRegistryError(w, http.StatusBadRequest, "DIGEST_INVALID", "want "+FillPath+"sha256:<hex>")
		return
	}
	if c.store.statBlob(d) >= 0 && !c.serveStored(w, r, d, nil) {
		return
	}
	c.mu.Lock()
	f, ok := c.fills[d]
	if ok {
		f.readers++
	}
	c.mu.Unlock()
	if !ok {
		writeRegistryError(w, http.StatusNotFound, "BLOB_UNKNOWN", "no download of "+d.String()+" here")
		return
	}
	defer f.release()
	f.serve(r.Context(), w, r)
}

// countingWriter counts response bytes before writing them, so that a
// client that has read its last byte sees it in the counters already.
type countingWriter struct {
	http.ResponseWriter
	n      interface{ Add(int64) int64 }
	client *counters // the client's own, or nil
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	if c.client != nil {
		c.client.servedBytes.Add(int64(len(p)))
	}
	n, err := c.ResponseWriter.Write(p)
	if n < len(p) {
		c.n.Add(int64(n - len(p)))
		if c.client != nil {
			c.client.servedBytes.Add(int64(n - len(p)))
		}
	}
	return n, err
}

// Unwrap lets http.ResponseController reach the real writer.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
