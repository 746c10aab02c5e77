package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
)

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
	h := sha256.New()
	var n, progress int64
	resumes := 0
	for {
		m, rerr := src.body.Read(*buf)
		if m > 0 {
			if _, werr := w.Write((*buf)[:m]); werr != nil {
				return storageError(s.root, werr)
			}
			h.Write((*buf)[:m])
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
			next, err := f.open(ctx)
			if err != nil {
				return err // the deferred close of the old source is a no-op now
			}
			src = next
			if (size >= 0 && src.size >= 0 && src.size != size) || !samePrefixFrom(src.body, r, n) {
				c.log.Warn("the next source of a blob does not match what was already received: abandoned, not stored; the next request fetches it again",
					"digest", f.dgst, "from", src.name, "bytes", n)
				return fmt.Errorf("blob %s: %s does not match what was already received: not stored", f.dgst, src.name)
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
	if err := w.Sync(); err != nil {
		return storageError(s.root, err)
	}
	// The part file is written in append mode: had anything cut it while
	// it filled, what follows went to its new end and the file is shorter
	// than what was received, instead of holding zeros under a valid
	// digest. So the bytes received are the bytes stored.
	if st, err := w.Stat(); err != nil || st.Size() != n {
		got := int64(-1)
		if err == nil {
			got = st.Size()
		}
		c.log.Warn("a blob's part file changed while it was written: not stored", "digest", f.dgst, "file", part, "size", got, "received", n)
		return fmt.Errorf("blob %s: the part file %s holds %d bytes of the %d received: changed while written, not stored", f.dgst, part, got, n)
	}
	if err := w.Close(); err != nil {
		return storageError(s.root, err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != f.dgst {
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

// close ends the source; a second call does nothing.
func (s *source) close() {
	s.stall.Stop()
	if s.body != nil {
		drain(s.body)
		s.body = nil
	}
	s.cancel(nil)
}

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
			// Ask again: this instance takes the claim and fetches from the
			// origin, or another instance already does (or the fleet
			// cannot say), and this fetch goes to the origin unclaimed.
			again, _, ok, ferr := fl.Blob(sctx, f.dgst)
			if ferr != nil || ok {
				if ok {
					again.Close()
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
