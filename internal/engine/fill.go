package engine

import (
	"errors"
	"os"
	"sync"

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
		lock, err := s.tryLock(s.fillPath(f.dgst, ".lock"))
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
