package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// store is a cache's storage directory. Layout, under root/v2:
//
//	blobs/sha256/<hex>        content: blobs and manifests, written once by rename
//	types/sha256/<hex>        a manifest's media type
//	fills/sha256-<hex>.lock   held (flock) by the process filling the digest
//	fills/sha256-<hex>.part   the fill's bytes so far
//	fills/sha256-<hex>.size   the size upstream announced, once known
//	locks/manifest-<hex>.lock held (flock) by the process fetching a manifest
//	                          (hex: sha256 of repository and reference)
//	repos/<name>/_tags/<tag>  the tag's digest; its mtime is when upstream last confirmed it
//	repos/<name>/_links/<hex> the repository may serve this digest; holds its size
//
// Every write that others may read is a rename of a complete file, so a
// reader in any process sees either nothing or the whole file.
type store struct {
	root string

	mu     sync.Mutex
	inUse  *os.File // a shared flock on root/in-use.lock while a cache runs
	closed bool
}

// LayoutDir is the one directory under a cache's storage directory that the
// engine writes: purge and gc remove it and nothing beside it.
const LayoutDir = "v2"

var layoutDirs = []string{"blobs/sha256", "types/sha256", "fills", "locks", "repos", "tmp"}

func openStore(dir string) (*store, error) {
	s := &store{root: filepath.Join(dir, LayoutDir)}
	if err := s.ensureLayout(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.root, inUseLock), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	s.inUse = f
	return s, nil
}

// ensureLayout makes the layout's directories; a cache whose storage was
// removed under it (a purge by hand) makes them again and goes on.
func (s *store) ensureLayout() error {
	for _, d := range layoutDirs {
		if err := os.MkdirAll(filepath.Join(s.root, d), 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (s *store) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inUse != nil {
		s.inUse.Close()
		s.inUse = nil
	}
	s.closed = true
}

// IsStorageDir reports whether dir holds a cache's storage: the engine's
// layout directory and nothing the engine did not write, so that purge and
// gc never touch a directory of the user's.
func IsStorageDir(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, LayoutDir, "blobs"))
	return err == nil && st.IsDir()
}

// create makes a new file for appending, making the layout again if it was
// removed.
func (s *store) create(path string) (*os.File, error) {
	const flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL | os.O_APPEND
	f, err := os.OpenFile(path, flags, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		if err := s.ensureLayout(); err != nil {
			return nil, err
		}
		f, err = os.OpenFile(path, flags, 0o644)
	}
	return f, err
}

// rename moves a complete file into place, making the layout again if it
// was removed.
func (s *store) rename(from, to string) error {
	err := os.Rename(from, to)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(from); serr == nil {
			if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
				return err
			}
			err = os.Rename(from, to)
		}
	}
	return err
}

// BlobsDir is where a cache with storage directory dir keeps its blobs and
// manifests, one file per sha256 digest named by its hex: the one place
// outside the store that knows the layout (gc, tests).
func BlobsDir(dir string) string { return filepath.Join(dir, LayoutDir, "blobs", "sha256") }

func (s *store) blobPath(d digest.Digest) string {
	return filepath.Join(s.root, "blobs", string(d.Algorithm()), d.Encoded())
}

func (s *store) typePath(d digest.Digest) string {
	return filepath.Join(s.root, "types", string(d.Algorithm()), d.Encoded())
}

func (s *store) fillPath(d digest.Digest, ext string) string {
	return filepath.Join(s.root, "fills", string(d.Algorithm())+"-"+d.Encoded()+ext)
}

func (s *store) manifestLockPath(name, ref string) string {
	sum := sha256.Sum256([]byte(name + "\x00" + ref))
	return filepath.Join(s.root, "locks", "manifest-"+hex.EncodeToString(sum[:])+".lock")
}

func (s *store) repoPath(name string, parts ...string) string {
	return filepath.Join(append([]string{s.root, "repos", filepath.FromSlash(name)}, parts...)...)
}

// statBlob returns a stored blob's size, or -1.
func (s *store) statBlob(d digest.Digest) int64 {
	st, err := os.Stat(s.blobPath(d))
	if err != nil || !st.Mode().IsRegular() {
		return -1
	}
	return st.Size()
}

// writeFile writes data to path atomically (temporary file, then rename).
func (s *store) writeFile(path string, data []byte) error { return s.write(path, data, false) }

// writeContent is writeFile for content (manifests): the data reaches the
// disk before the rename makes it visible, so a crash cannot leave a stored
// manifest that is empty or cut. Tags and links need not: a lost or cut one
// reads as missing and is fetched or confirmed again.
func (s *store) writeContent(path string, data []byte) error { return s.write(path, data, true) }

func (s *store) write(path string, data []byte, durable bool) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Join(s.root, "tmp"), "w-*")
	if errors.Is(err, fs.ErrNotExist) {
		if err := s.ensureLayout(); err != nil {
			return err
		}
		tmp, err = os.CreateTemp(filepath.Join(s.root, "tmp"), "w-*")
	}
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	var serr error
	if durable && werr == nil {
		serr = tmp.Sync()
	}
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := s.rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

// putManifest stores a verified manifest and its media type.
func (s *store) putManifest(d digest.Digest, mediaType string, payload []byte) error {
	if err := s.writeContent(s.typePath(d), []byte(mediaType)); err != nil {
		return err
	}
	if have, err := os.ReadFile(s.blobPath(d)); err == nil && digest.FromBytes(have) == d {
		return nil // stored and whole; one that rotted is written again
	}
	return s.writeContent(s.blobPath(d), payload)
}

// errDamaged is a stored file whose bytes do not match its digest.
var errDamaged = errors.New("stored bytes do not match their digest")

// readManifest reads a stored manifest and checks its digest.
func (s *store) readManifest(d digest.Digest) (mediaType string, payload []byte, err error) {
	mt, err := os.ReadFile(s.typePath(d))
	if err != nil {
		return "", nil, err
	}
	payload, err = os.ReadFile(s.blobPath(d))
	if err != nil {
		return "", nil, err
	}
	if digest.FromBytes(payload) != d {
		return "", nil, errDamaged
	}
	return string(mt), payload, nil
}

// link records that a repository may serve a digest, with the size its
// manifest gives (-1: unknown).
func (s *store) link(name string, d digest.Digest, size int64) error {
	p := s.repoPath(name, "_links", d.Encoded())
	if old, ok := s.linked(name, d); ok && (old == size || size < 0) {
		return nil
	}
	return s.writeFile(p, []byte(strconv.FormatInt(size, 10)))
}

// linked reports whether a repository may serve a digest, and its size.
func (s *store) linked(name string, d digest.Digest) (size int64, ok bool) {
	b, err := os.ReadFile(s.repoPath(name, "_links", d.Encoded()))
	if err != nil {
		return -1, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1, true
	}
	return n, true
}

// setTag points a tag at a digest, confirmed by upstream now.
func (s *store) setTag(name, tag string, d digest.Digest) error {
	return s.writeFile(s.repoPath(name, "_tags", tag), []byte(d.String()))
}

// touchTag records that upstream confirmed a tag now.
func (s *store) touchTag(name, tag string, now time.Time) error {
	return os.Chtimes(s.repoPath(name, "_tags", tag), now, now)
}

// tag returns the digest a tag points at and when upstream last confirmed it.
func (s *store) tag(name, tag string) (digest.Digest, time.Time, bool) {
	p := s.repoPath(name, "_tags", tag)
	b, err := os.ReadFile(p)
	if err != nil {
		return "", time.Time{}, false
	}
	d, err := digest.Parse(strings.TrimSpace(string(b)))
	if err != nil {
		return "", time.Time{}, false
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", time.Time{}, false
	}
	return d, st.ModTime(), true
}

// removeBlob drops a stored blob that failed a check.
func (s *store) removeBlob(d digest.Digest) error {
	err := os.Remove(s.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// sweep removes leftovers of fills no process is running: part files whose
// lock nobody holds, and temporary files older than a minute. It returns the
// number of files and bytes removed.
func (s *store) sweep(now time.Time) (files int, bytes int64) {
	dir := filepath.Join(s.root, "fills")
	ents, _ := os.ReadDir(dir)
	seen := map[string]bool{}
	for _, e := range ents {
		base, ok := strings.CutSuffix(e.Name(), ".part")
		if !ok {
			base, ok = strings.CutSuffix(e.Name(), ".size")
		}
		if !ok || seen[base] {
			continue
		}
		seen[base] = true
		l, err := tryLock(filepath.Join(dir, base+".lock"))
		if err != nil || l == nil {
			continue // held: a fill is running
		}
		for _, ext := range []string{".part", ".size"} {
			p := filepath.Join(dir, base+ext)
			if st, err := os.Stat(p); err == nil && os.Remove(p) == nil {
				files++
				bytes += st.Size()
			}
		}
		l.release(true)
	}
	// Manifest locks are removed by their holders; a process that died
	// leaves an empty file, which goes once nobody holds it.
	locks := filepath.Join(s.root, "locks")
	ents, _ = os.ReadDir(locks)
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < time.Minute {
			continue
		}
		if l, err := tryLock(filepath.Join(locks, e.Name())); err == nil && l != nil {
			l.release(true)
			files++
		}
	}
	tmp := filepath.Join(s.root, "tmp")
	ents, _ = os.ReadDir(tmp)
	for _, e := range ents {
		info, err := e.Info()
		if err == nil && now.Sub(info.ModTime()) > time.Minute && os.Remove(filepath.Join(tmp, e.Name())) == nil {
			files++
			bytes += info.Size()
		}
	}
	return files, bytes
}
