package engine

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// inUseLock is held shared by every running cache on a storage directory;
// InUse takes it exclusively to learn whether any is running.
const inUseLock = "in-use.lock"

// relock makes the layout and the in-use lock again when they were removed
// under the running cache.
func (s *store) relock() {
	path := filepath.Join(s.root, inUseLock)
	if _, err := os.Stat(path); err == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := os.Stat(path); err == nil || s.closed {
		return // made again meanwhile, or the cache is gone
	}
	if s.ensureLayout() != nil {
		return
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	if syscall.Flock(int(f.Fd()), syscall.LOCK_SH) != nil {
		f.Close()
		return
	}
	old := s.inUse
	s.inUse = f
	if old != nil {
		old.Close()
	}
}

// InUse reports whether a running cache (of any process) serves from the
// storage directory dir.
func InUse(dir string) (bool, error) {
	f, err := os.Open(filepath.Join(dir, LayoutDir, inUseLock))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false, nil
}

// fileLock is an exclusive flock on a lock file. Locks belong to open files,
// not processes, so two caches in one process exclude each other too, and
// the kernel drops the lock of a process that dies.
type fileLock struct {
	f    *os.File
	path string
}

// tryLock is tryLock on the store's layout, which is made again first (the
// in-use lock with it) when it was removed under the running cache: a purge
// by hand, say.
func (s *store) tryLock(path string) (*fileLock, error) {
	s.relock()
	return tryLock(path)
}

// tryLock takes the lock at path without waiting. It returns nil, nil when
// another holder has it. A lock file is removed by its holder when a fill
// ends; the inode check below makes sure a lock taken on a file that was
// removed meanwhile is not mistaken for the current one.
func tryLock(path string) (*fileLock, error) {
	for range 8 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if errors.Is(err, fs.ErrNotExist) {
			// The layout was removed under a running cache: make it again.
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return nil, err
			}
			f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		}
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, nil
			}
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		held, err1 := f.Stat()
		now, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(held, now) {
			return &fileLock{f: f, path: path}, nil
		}
		f.Close() // removed under us: take the new one
	}
	return nil, fmt.Errorf("locking %s: the lock file keeps being replaced", path)
}

// release unlocks; with remove, the lock file goes first, while still held.
func (l *fileLock) release(remove bool) {
	if remove {
		os.Remove(l.path)
	}
	l.f.Close()
}
