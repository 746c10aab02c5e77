package engine

import (
	"crypto/sha256"
	"io"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// verifiedFiles remembers the stored files whose bytes were hashed and
// matched their digest, by what stat says of them: a file changed since
// (written to, replaced, truncated) no longer matches its stamp and is
// hashed again when next served. Every stored blob is thus hashed once per
// process before it is trusted: rot on disk is found on the first serve,
// and a warm pull costs no hashing after that.
type verifiedFiles struct {
	mu sync.Mutex
	m  map[string]stamp
}

type stamp struct {
	size  int64
	mtime time.Time
	ino   uint64
	ctime syscall.Timespec
}

func stampOf(fi os.FileInfo) stamp {
	s := stamp{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino, s.ctime = st.Ino, st.Ctim
	}
	return s
}

func (v *verifiedFiles) ok(path string, fi os.FileInfo) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	st, ok := v.m[path]
	return ok && st == stampOf(fi)
}

// mark records path as verified as it is now.
func (v *verifiedFiles) mark(path string) {
	fi, err := os.Stat(path)
	if err != nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = map[string]stamp{}
	}
	v.m[path] = stampOf(fi)
}

func (v *verifiedFiles) forget(path string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.m, path)
}

// smallBlob is the size up to which a stored blob not yet verified is hashed
// before its first byte is sent, so that rot costs the client nothing: the
// blob is fetched again in the same request. Larger ones are hashed as they
// are sent, with the last byte held back until the digest matches.
const smallBlob = 1 << 20

// rotten removes a stored blob whose bytes do not match its digest.
func (c *Cache) rotten(d digest.Digest, got digest.Digest) {
	path := c.store.blobPath(d)
	c.log.Warn("a stored blob's bytes do not match its digest (damaged on disk); removed, to be fetched again",
		"digest", d, "got", got, "file", path)
	c.verified.forget(path)
	_ = c.store.removeBlob(d)
	c.stats.rotten.Add(1)
	c.damaged(Damage{Host: c.cfg.Host, Kind: "blob", Digest: d, File: path})
}

// Damage is a stored object whose bytes did not match its digest: removed,
// to be fetched again.
type Damage struct {
	Host   string        // the registry the cache is for
	Kind   string        // "blob" or "manifest"
	Digest digest.Digest // what it should have been
	File   string        // where it was stored
}

func (c *Cache) damaged(d Damage) {
	if c.cfg.OnDamage != nil {
		c.cfg.OnDamage(d)
	}
}

// copyVerified sends size bytes of f, hashing them, and sends the last byte
// only when the digest matches; otherwise the blob is removed and the
// response cut, which every client retries.
func (c *Cache) copyVerified(w http.ResponseWriter, f *os.File, d digest.Digest, size int64) {
	h := sha256.New()
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	body := io.NewSectionReader(f, 0, size)
	if size > 0 {
		if _, err := io.CopyBuffer(io.MultiWriter(h, w), io.LimitReader(body, size-1), *buf); err != nil {
			return // the client went away, or the file could not be read: a cut either way
		}
	}
	last := make([]byte, min(size, 1))
	if _, err := io.ReadFull(body, last); err != nil {
		panic(http.ErrAbortHandler)
	}
	h.Write(last)
	if got := digest.NewDigest(digest.SHA256, h); got != d {
		c.rotten(d, got)
		panic(http.ErrAbortHandler)
	}
	c.verified.mark(c.store.blobPath(d))
	_, _ = w.Write(last)
}
