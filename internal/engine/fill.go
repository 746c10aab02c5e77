package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// fill is one download of a blob into storage, read by every client waiting
// for it while it grows. In the process that holds the digest's lock it is
// the download itself; in the others it follows the part file.
type fill struct {
	c    *Cache
	dgst digest.Digest
	repo string // the repository it is fetched for

	mu      sync.Mutex
	changed chan struct{} // closed at every change, then replaced
	gen     int           // bumped when file is replaced by another download's
	file    *os.File      // the bytes so far, for ReadAt
	files   []*os.File    // every file opened, closed when the last reader goes
	size    int64         // announced by upstream; -1 unknown
	sized   bool          // size is known (or the fill failed first)
	written int64
	done    bool
	err     error
	readers int
	claimed bool  // the fleet gave this instance the download: Fleet.Done follows
	want    int64 // the size the repository's manifest gives; -1 unknown
}

var errStalled = errors.New("stalled")

// joinFill returns the fill of a digest, starting one if none runs here.
func (c *Cache) joinFill(d digest.Digest, repo string, want int64) (f *fill, joined bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, false, errClosing
	}
	if f, ok := c.fills[d]; ok {
		f.readers++
		return f, true, nil
	}
	// Two references: the caller's, and the download's own, which finish
	// drops.
	f = &fill{c: c, dgst: d, repo: repo, want: want, changed: make(chan struct{}), size: -1, readers: 2}
	c.fills[d] = f
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		err := f.run()
		c.mu.Lock()
		delete(c.fills, d)
		c.mu.Unlock()
		f.finish(err)
	}()
	return f, false, nil
}

// run downloads the blob, or follows another process's download and takes
// over when that process goes away.
func (f *fill) run() error {
	s := f.c.store
	for {
		if f.c.ctx.Err() != nil {
			return errClosing
		}
		if s.statBlob(f.dgst) >= 0 {
			return f.useCommitted()
		}
		lock, err := tryLock(s.fillPath(f.dgst, ".lock"))
		if err != nil {
			return storageError(s.root, err)
		}
		if lock == nil {
			lock, err = f.follow()
			if err != nil || lock == nil {
				return err
			}
		}
		if s.statBlob(f.dgst) >= 0 {
			lock.release(true)
			continue
		}
		return f.download(lock)
	}
}

// useCommitted points the fill at the stored blob: finished elsewhere.
func (f *fill) useCommitted() error {
	file, err := os.Open(f.c.store.blobPath(f.dgst))
	if err != nil {
		return storageError(f.c.store.root, err)
	}
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return err
	}
	f.setFile(file)
	f.update(func() { f.size, f.sized, f.written = st.Size(), true, st.Size() })
	return nil
}

func (f *fill) setFile(file *os.File) {
	f.update(func() {
		if f.file != nil {
			f.gen++
		}
		f.file = file
		f.files = append(f.files, file)
		f.written = 0
	})
}

func (f *fill) update(fn func()) {
	f.mu.Lock()
	fn()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *fill) finish(err error) {
	f.update(func() {
		f.done, f.err = true, err
		if err != nil {
			f.sized = true
		}
	})
	f.release()
}

// release drops a reader; the last one closes the files.
func (f *fill) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readers--
	if f.readers == 0 && f.done {
		for _, file := range f.files {
			file.Close()
		}
		f.files = nil
	}
}

// stallProgress is what a download must receive within the stall timeout
// to count as moving: a trickle of a few bytes a second is a stall.
const stallProgress = 32 << 10

// download fetches the blob into a part file while readers read it, checks
// size and digest of what was stored, and renames it into place. It
// releases the lock.
func (f *fill) download(lock *fileLock) (err error) {
	c, s := f.c, f.c.store
	part, sizePath := s.fillPath(f.dgst, ".part"), s.fillPath(f.dgst, ".size")
	defer func() {
		if err != nil {
			os.Remove(part)
			os.Remove(sizePath)
		}
		lock.release(true)
	}()
	os.Remove(part)
	os.Remove(sizePath)
	w, err := s.create(part)
	if err != nil {
		return storageError(s.root, err)
	}
	defer w.Close()
	r, err := os.Open(part)
	if err != nil {
		return storageError(s.root, err)
	}
	f.setFile(r)

	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	// A fleet claim taken by open, now or on a resume, ends with the
	// download, whichever way it ends: the blob to share, or nothing.
	defer func() {
		if f.claimed {
			path := ""
			if err == nil {
				path = s.blobPath(f.dgst)
			}
			c.cfg.Fleet.Done(context.WithoutCancel(c.ctx), f.dgst, path)
		}
	}()
	src, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer func() { src.close() }()
	size := src.size
	if free, ok := freeBytes(s.root); ok && size > free {
		return fmt.Errorf("%w: blob %s needs %d bytes, %d are free in %s", ErrDiskFull, f.dgst, size, free, s.root)
	}
	if err := os.WriteFile(sizePath, []byte(strconv.FormatInt(size, 10)), 0o644); err != nil {
		return storageError(s.root, err)
	}
	f.update(func() { f.size, f.sized = size, true })

	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	var n, progress int64
	resumes := 0
	for {
		m, rerr := src.body.Read(*buf)
		if m > 0 {
			if _, werr := w.Write((*buf)[:m]); werr != nil {
				return storageError(s.root, werr)
			}
			n += int64(m)
			if progress += int64(m); progress >= stallProgress {
				src.moving()
				progress = 0
			}
			f.update(func() { f.written = n })
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil && src.fleet && resumes < 3 && ctx.Err() == nil {
			// The peer or bucket this came from broke off or stalled:
			// resume from the next source (another peer, the bucket, the
			// origin), once it proves to start with what is here.
			resumes++
			c.log.Warn("a fleet source broke off; resuming from the next", "digest", f.dgst, "bytes", n, "error", rerr)
			src.close()
			if src, err = f.open(ctx); err != nil {
				return err
			}
			if (size >= 0 && src.size >= 0 && src.size != size) || !samePrefixFrom(src.body, r, n) {
				return fmt.Errorf("blob %s: the next source does not match what was already received: not stored", f.dgst)
			}
			progress = 0
			continue
		}
		if rerr != nil {
			return f.fetchError(src, rerr, n)
		}
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%s sent %d bytes of blob %s, announced %d", src.name, n, f.dgst, size)
	}
	// On disk before it is visible: a crash must not leave a stored blob
	// that is empty or cut under its digest's name.
	if err := errors.Join(w.Sync(), w.Close()); err != nil {
		return storageError(s.root, err)
	}
	// The digest of what was stored, not of what arrived: the part file
	// is what will be served.
	got, err := digestOfFile(r, n)
	if err != nil {
		return storageError(s.root, err)
	}
	if got != f.dgst {
		if src.fleet {
			c.cfg.Fleet.Discard(context.WithoutCancel(c.ctx), f.dgst)
		}
		c.log.Warn("a downloaded blob does not match its digest: not stored; the next request fetches it again", "digest", f.dgst, "from", src.name, "got", got)
		return fmt.Errorf("%s sent blob %s with digest %s: not stored", src.name, f.dgst, got)
	}
	if err := s.rename(part, s.blobPath(f.dgst)); err != nil {
		return storageError(s.root, err)
	}
	c.verified.mark(s.blobPath(f.dgst))
	os.Remove(sizePath)
	if err := s.link(f.repo, f.dgst, n); err != nil {
		c.log.Warn("linking a stored blob", "repo", f.repo, "digest", f.dgst, "error", err)
	}
	return nil
}

// digestOfFile hashes the first n bytes of file.
func digestOfFile(file *os.File, n int64) (digest.Digest, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(file, 0, n)); err != nil {
		return "", err
	}
	return digest.NewDigest(digest.SHA256, h), nil
}

// source is where one download reads from, with its own stall timer: a
// source that sends less than stallProgress bytes in the stall timeout is
// cancelled, and a fleet source is then replaced by the next one.
type source struct {
	body    io.ReadCloser
	size    int64
	fleet   bool   // a peer's download or the fleet's bucket
	name    string // for messages: "upstream docker.io" or "the fleet"
	ctx     context.Context
	cancel  context.CancelCauseFunc
	stall   *time.Timer
	timeout time.Duration
}

func (s *source) moving() { s.stall.Reset(s.timeout) }

func (s *source) stalled() bool { return errors.Is(context.Cause(s.ctx), errStalled) }

func (s *source) close() {
	s.stall.Stop()
	if s.body != nil {
		drain(s.body)
	}
	s.cancel(nil)
}

// fleetTimeout bounds the wait for the fleet's answer about a blob, beyond
// the wait for a download another instance holds the claim on.
const fleetTimeout = 10 * time.Second

// open returns where to read the blob from: the fleet (a peer's download or
// the shared storage) when the cache is part of one and the fleet has it,
// else the upstream, each on a fresh stall budget. When the fleet says this
// instance is to fetch it, f.claimed is set and Fleet.Done must follow.
func (f *fill) open(ctx context.Context) (*source, error) {
	c := f.c
	sctx, cancel := context.WithCancelCause(ctx)
	src := &source{ctx: sctx, cancel: cancel, timeout: c.cfg.StallTimeout, name: "upstream " + c.cfg.Host}
	src.stall = time.AfterFunc(c.cfg.StallTimeout, func() { cancel(errStalled) })
	if fl := c.cfg.Fleet; fl != nil && !f.claimed {
		b, sz, ok, ferr := fl.Blob(sctx, f.dgst)
		switch {
		case ferr != nil:
			// Per-instance behaviour: the pull goes on without the fleet.
			c.log.Warn("fleet coordination unavailable; fetching from upstream alone", "digest", f.dgst, "error", ferr)
		case ok && f.want >= 0 && sz >= 0 && sz != f.want:
			// A bucket object of the wrong size is damaged: remove it, and
			// fetch from the origin.
			b.Close()
			c.log.Warn("the fleet's copy of a blob has the wrong size; removed, fetching from upstream", "digest", f.dgst, "size", sz, "want", f.want)
			fl.Discard(context.WithoutCancel(c.ctx), f.dgst)
			b, sz, ok, ferr = fl.Blob(sctx, f.dgst)
			if ferr != nil || ok {
				if ok {
					b.Close()
				}
				return f.openUpstream(src)
			}
			f.claimed = true
		case ok:
			src.body, src.size, src.fleet, src.name = b, sz, true, "the fleet"
			return src, nil
		default:
			f.claimed = true
		}
		// The fleet's wait is not the origin's: a fresh budget.
		src.stall.Reset(c.cfg.StallTimeout)
	}
	return f.openUpstream(src)
}

func (f *fill) openUpstream(src *source) (*source, error) {
	c := f.c
	resp, err := c.up.do(src.ctx, http.MethodGet, f.repo, "blobs/"+f.dgst.String(), nil)
	if err != nil {
		src.close()
		return nil, f.fetchError(src, err, 0)
	}
	if resp.StatusCode != http.StatusOK {
		src.close()
		return nil, c.up.statusError(resp, "blob "+f.repo+"@"+f.dgst.String())
	}
	src.body, src.size = resp.Body, resp.ContentLength
	return src, nil
}

// samePrefixFrom reads n bytes from body and compares them with the first
// n bytes of the part file.
func samePrefixFrom(body io.Reader, part *os.File, n int64) bool {
	a, b := make([]byte, 64<<10), make([]byte, 64<<10)
	for off := int64(0); off < n; {
		k := int(min(int64(len(a)), n-off))
		if _, err := io.ReadFull(body, a[:k]); err != nil {
			return false
		}
		if _, err := part.ReadAt(b[:k], off); err != nil && err != io.EOF {
			return false
		}
		if !bytes.Equal(a[:k], b[:k]) {
			return false
		}
		off += int64(k)
	}
	return true
}

// fetchError says why a download stopped, and logs the ones a user needs
// to hear about.
func (f *fill) fetchError(src *source, err error, got int64) error {
	c := f.c
	if src.stalled() {
		c.up.markDown()
		c.log.Warn("upstream stalled: abandoned the blob's download; the next request starts a new one",
			"digest", f.dgst, "repo", f.repo, "bytes", got, "stall_timeout", c.cfg.StallTimeout)
		return &upstreamError{host: c.cfg.Host, status: http.StatusGatewayTimeout, code: "UNAVAILABLE",
			msg: fmt.Sprintf("upstream %s stalled: less than %d KiB of blob %s in %s (after %d bytes)", c.cfg.Host, stallProgress>>10, f.dgst, c.cfg.StallTimeout, got)}
	}
	if c.ctx.Err() != nil {
		return errClosing
	}
	var ue *upstreamError
	if !errors.As(err, &ue) {
		c.up.markDown()
		err = &upstreamError{host: c.cfg.Host, status: http.StatusBadGateway, code: "UNAVAILABLE",
			msg: fmt.Sprintf("upstream %s broke off blob %s after %d bytes: %s", c.cfg.Host, f.dgst, got, c.secrets.redact(err.Error())), err: err}
	}
	c.log.Warn("downloading a blob failed", "digest", f.dgst, "repo", f.repo, "bytes", got, "error", err)
	return err
}

// follow reads another process's download as its part file grows. It
// returns the lock when that process is gone without finishing, nil when the
// blob is stored.
func (f *fill) follow() (*fileLock, error) {
	s := f.c.store
	part, sizePath := s.fillPath(f.dgst, ".part"), s.fillPath(f.dgst, ".size")
	var file *os.File
	var last int64 = -1
	lastChange := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.statBlob(f.dgst) >= 0 {
			return nil, f.useCommitted()
		}
		lock, err := tryLock(s.fillPath(f.dgst, ".lock"))
		if err != nil {
			return nil, storageError(s.root, err)
		}
		if lock != nil {
			return lock, nil
		}
		if st, err := os.Stat(part); err == nil {
			if file != nil {
				if fst, err := file.Stat(); err != nil || !os.SameFile(fst, st) {
					file = nil // a new download replaced it
				}
			}
			if file == nil {
				if file, err = os.Open(part); err == nil {
					f.setFile(file)
					last = -1
				}
			}
			if file != nil && st.Size() != last {
				last, lastChange = st.Size(), time.Now()
				n := st.Size()
				f.update(func() { f.written = n })
			}
			if !f.isSized() {
				if b, err := os.ReadFile(sizePath); err == nil {
					if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
						f.update(func() { f.size, f.sized = n, true })
					}
				}
			}
		}
		if time.Since(lastChange) > 2*f.c.cfg.StallTimeout+f.c.cfg.HeaderTimeout {
			return nil, &upstreamError{host: f.c.cfg.Host, status: http.StatusGatewayTimeout, code: "UNAVAILABLE",
				msg: fmt.Sprintf("blob %s: the download by another process sharing this cache's storage made no progress for %s", f.dgst, time.Since(lastChange).Round(time.Second))}
		}
		select {
		case <-f.c.ctx.Done():
			return nil, errClosing
		case <-tick.C:
		}
	}
}

func (f *fill) isSized() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sized
}

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
