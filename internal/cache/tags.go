package cache

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// tagBook remembers when each tag was last confirmed by upstream, so that a
// warm pull within the tag TTL makes no upstream request at all. It is kept in
// the storage directory so that the next test run starts with it.
type tagBook struct {
	path string

	mu      sync.Mutex
	checked map[string]time.Time
}

const tagBookFile = "pullthrough-tags.json"

func openTagBook(dir string) *tagBook {
	b := &tagBook{path: filepath.Join(dir, tagBookFile), checked: map[string]time.Time{}}
	data, err := os.ReadFile(b.path)
	if err != nil {
		return b
	}
	// A damaged file only costs one revalidation per tag: start empty.
	_ = json.Unmarshal(data, &b.checked)
	return b
}

func (b *tagBook) fresh(key string, ttl time.Duration, now time.Time) bool {
	if ttl <= 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.checked[key]
	return ok && now.Sub(t) < ttl
}

// mark records a successful revalidation. The file is replaced atomically so
// two test binaries sharing a storage directory never read half a file.
func (b *tagBook) mark(key string, now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.checked[key] = now
	data, err := json.Marshal(b.checked)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(b.path), ".tags-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), b.path)
}
