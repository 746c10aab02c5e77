package engine

import (
	"context"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
)

// serveBlob answers GET and HEAD of /v2/<name>/blobs/<digest>.
func (c *Cache) serveBlob(w http.ResponseWriter, r *http.Request, rt route) {
	ctx := r.Context()
	d := digest.Digest(rt.ref)
	want, linked := c.store.linked(rt.name, d)
	if have := c.store.statBlob(d); have >= 0 {
		switch {
		case linked && want >= 0 && have != want:
			c.log.Warn("a stored blob has the wrong size; removed, to be fetched again",
				"digest", d, "repo", rt.name, "size", have, "want", want)
			_ = c.store.removeBlob(d)
		case linked:
			c.note(w, hitsOf, 1)
			if !c.serveStored(w, r, d, nil) {
				return
			}
			c.note(w, hitsOf, -1)
		case c.cfg.Mode == Strict:
			c.notCached(w, rt)
			return
		default:
			// Stored for another repository: this one may have it too,
			// if upstream says so. One HEAD, no bytes.
			size, err := c.headBlob(ctx, rt)
			if err != nil {
				c.note(w, missesOf, 1)
				c.writeError(w, err)
				return
			}
			if size >= 0 && size != have {
				_ = c.store.removeBlob(d)
				break
			}
			_ = c.store.link(rt.name, d, size)
			c.note(w, hitsOf, 1)
			if !c.serveStored(w, r, d, nil) {
				return
			}
			c.note(w, hitsOf, -1)
		}
	}
	if c.cfg.Mode == Strict {
		c.notCached(w, rt)
		return
	}
	c.note(w, missesOf, 1)
	if r.Method == http.MethodHead {
		size, err := c.headBlob(ctx, rt)
		if err != nil {
			c.writeError(w, err)
			return
		}
		setBlobHeaders(w.Header(), d)
		if size >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	f, joined, err := c.joinFill(d, rt.name, want)
	if err != nil {
		c.writeError(w, err)
		return
	}
	defer f.release()
	if joined {
		c.note(w, coalescedOf, 1)
		if f.repo != rt.name && !linked {
			if _, err := c.headBlob(ctx, rt); err != nil {
				c.writeError(w, err)
				return
			}
		}
	}
	if f.repo != rt.name {
		defer func() {
			if v := f.view(); v.done && v.err == nil {
				_ = c.store.link(rt.name, d, v.size)
			}
		}()
	}
	f.serve(ctx, w, r)
}

// headBlob asks upstream whether a repository has a blob, and its size.
func (c *Cache) headBlob(ctx context.Context, rt route) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HeaderTimeout)
	defer cancel()
	resp, err := c.up.do(ctx, http.MethodHead, rt.name, "blobs/"+rt.ref, nil)
	if err != nil {
		return -1, err
	}
	if resp.StatusCode != http.StatusOK {
		return -1, c.up.statusError(resp, "blob "+rt.String())
	}
	drain(resp.Body)
	return resp.ContentLength, nil
}

func setBlobHeaders(h http.Header, d digest.Digest) {
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	// Content by digest never changes.
	h.Set("Cache-Control", "max-age=31536000")
}

// serveStored answers from a stored blob's file (opened here when f is nil).
// A blob not yet verified by this process is hashed: before the first byte
// when it is small or a range is asked for (rotten then reports that it was
// removed and nothing was sent: the caller fetches it again), else as it is
// sent, with the last byte held back until the digest matches.
//
// Whole blobs are copied in 256 KiB steps through the counting writer,
// which has no ReadFrom, so net/http does not use sendfile: over loopback
// here a plain copy was the faster of the two.
func (c *Cache) serveStored(w http.ResponseWriter, r *http.Request, d digest.Digest, f *os.File) (rotten bool) {
	path := c.store.blobPath(d)
	if f == nil {
		var err error
		if f, err = os.Open(path); err != nil {
			c.writeError(w, storageError(c.store.root, err))
			return false
		}
		defer f.Close()
	}
	st, err := f.Stat()
	if err != nil {
		c.writeError(w, storageError(c.store.root, err))
		return false
	}
	trusted := c.verified.ok(path, st)
	if time.Since(st.ModTime()) > time.Hour {
		// Least recently used goes first in `pullthrough gc`: a blob's
		// mtime says when it was last served, to the hour.
		now := time.Now()
		if os.Chtimes(path, now, now) == nil && trusted {
			c.verified.mark(path)
		}
	}
	size := st.Size()
	if !trusted && r.Method != http.MethodHead && (r.Header.Get("Range") != "" || size <= smallBlob) {
		got, err := digestOfFile(f, size)
		if err != nil {
			c.writeError(w, storageError(c.store.root, err))
			return false
		}
		if got != d {
			c.rotten(d, got)
			return true
		}
		c.verified.mark(path)
		trusted = true
	}
	setBlobHeaders(w.Header(), d)
	if r.Header.Get("Range") != "" {
		http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(f, 0, size))
		return false
	}
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return false
	}
	if !trusted {
		c.copyVerified(w, f, d, size)
		return false
	}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	_, _ = io.CopyBuffer(w, io.NewSectionReader(f, 0, size), *buf)
	return false
}
