package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"hash"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// view is what a reader may read now.
type view struct {
	file    *os.File
	gen     int
	size    int64
	sized   bool
	written int64
	done    bool
	err     error
	changed <-chan struct{}
}

func (f *fill) view() view {
	f.mu.Lock()
	defer f.mu.Unlock()
	return view{f.file, f.gen, f.size, f.sized, f.written, f.done, f.err, f.changed}
}

// serve answers one client from the fill: an error status if the fill
// fails before a byte is known, else the bytes as they arrive. A fill that
// fails later cuts the response, which clients see as a broken download
// and retry.
func (f *fill) serve(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	var v view
	for {
		v = f.view()
		if v.sized || v.done {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-v.changed:
		}
	}
	if v.err != nil && v.written == 0 {
		f.c.writeError(w, v.err)
		return
	}
	if r.Header.Get("Range") != "" {
		// A resumed download: wait for the blob, then serve the range from it.
		for !v.done {
			select {
			case <-ctx.Done():
				return
			case <-v.changed:
			}
			v = f.view()
		}
		if v.err != nil {
			f.c.writeError(w, v.err)
			return
		}
		if f.c.serveStored(w, r, f.dgst, v.file) {
			writeRegistryError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "blob "+f.dgst.String()+" was damaged on disk and removed; retry to fetch it again")
		}
		return
	}
	setBlobHeaders(w.Header(), f.dgst)
	if v.size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(v.size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	rc := http.NewResponseController(w)
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	sent := sha256.New()
	var off int64
	gen := v.gen
	for {
		v = f.view()
		if v.gen != gen {
			// Another download replaced the one these bytes came from:
			// continue only if it starts with what was already sent.
			ok, g := f.samePrefix(ctx, sent, off)
			if !ok {
				f.c.log.Warn("a new download of a blob differs from what a client was sent; cutting the response", "digest", f.dgst)
				panic(http.ErrAbortHandler)
			}
			gen = g
			continue
		}
		// The last byte waits for the digest: a client is never handed a
		// complete body that does not match it, only a cut, which every
		// client retries.
		avail := v.written
		if !v.done || v.err != nil {
			if v.size >= 0 {
				avail = min(avail, v.size-1)
			} else {
				avail--
			}
		}
		if off < avail {
			m, err := v.file.ReadAt((*buf)[:min(int64(len(*buf)), avail-off)], off)
			if m > 0 {
				sent.Write((*buf)[:m])
				if _, werr := w.Write((*buf)[:m]); werr != nil {
					return // the client went away; the fill goes on for the others
				}
				off += int64(m)
			}
			if err != nil && err != io.EOF {
				f.c.log.Warn("reading a blob's part file", "digest", f.dgst, "error", err)
				panic(http.ErrAbortHandler)
			}
			continue
		}
		if v.done {
			if v.err != nil || (v.size >= 0 && off != v.size) {
				panic(http.ErrAbortHandler) // a cut, never a short body taken for whole
			}
			return
		}
		_ = rc.Flush()
		select {
		case <-ctx.Done():
			return
		case <-v.changed:
		}
	}
}

// samePrefix waits until the current file holds n bytes and compares them
// with what was sent. It reports the generation of the file it compared.
func (f *fill) samePrefix(ctx context.Context, sent hash.Hash, n int64) (bool, int) {
	want := sent.Sum(nil)
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var off int64
	gen := f.view().gen
	for off < n {
		v := f.view()
		if v.gen != gen {
			gen, off = v.gen, 0
			h.Reset()
			continue
		}
		if off < v.written {
			m, err := v.file.ReadAt(buf[:min(int64(len(buf)), v.written-off, n-off)], off)
			h.Write(buf[:m])
			off += int64(m)
			if err != nil && err != io.EOF {
				return false, gen
			}
			continue
		}
		if v.done {
			return false, gen
		}
		select {
		case <-ctx.Done():
			return false, gen
		case <-v.changed:
		}
	}
	return bytes.Equal(h.Sum(nil), want), gen
}

// copyBufs hold 256 KiB: an eighth of the system calls of io.Copy's 32 KiB.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// freeBytes is the space left for this process in dir's file system.
func freeBytes(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}
