package engine

import (
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
)

// manifestMemory keeps stored manifests in memory by digest, so that a warm
// manifest request costs a stat, not a read and a hash: a 4 MiB index asked
// for 200 times at once is read once. An entry is used only while the file
// is the one it was read from (the same stamp).
type manifestMemory struct {
	mu    sync.Mutex
	m     map[digest.Digest]memEntry
	bytes int
}

type memEntry struct {
	stamp     stamp
	mediaType string
	payload   []byte
}

// memoryBytes bounds what manifestMemory holds; past it, it starts over.
const memoryBytes = 64 << 20

func (m *manifestMemory) get(d digest.Digest, fi os.FileInfo) (memEntry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.m[d]
	return e, ok && e.stamp == stampOf(fi)
}

func (m *manifestMemory) put(d digest.Digest, e memEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil || m.bytes+len(e.payload) > memoryBytes {
		m.m, m.bytes = map[digest.Digest]memEntry{}, 0
	}
	if old, ok := m.m[d]; ok {
		m.bytes -= len(old.payload)
	}
	m.m[d] = e
	m.bytes += len(e.payload)
}

func (m *manifestMemory) forget(d digest.Digest) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.m[d]; ok {
		m.bytes -= len(old.payload)
		delete(m.m, d)
	}
}

// storedManifest returns a stored manifest whose bytes match its digest. A
// stored one that does not match is removed (counted as damaged), to be
// fetched and written again.
func (c *Cache) storedManifest(d digest.Digest) (mediaType string, payload []byte, ok bool) {
	fi, err := os.Stat(c.store.blobPath(d))
	if err != nil {
		return "", nil, false
	}
	if e, ok := c.manifests.get(d, fi); ok {
		return e.mediaType, e.payload, true
	}
	mt, payload, err := c.store.readManifest(d)
	switch {
	case err == errDamaged:
		c.manifests.forget(d)
		c.log.Warn("a stored manifest's bytes do not match its digest (damaged on disk); removed, to be fetched again", "digest", d, "file", c.store.blobPath(d))
		_ = c.store.removeBlob(d)
		c.stats.rotten.Add(1)
		c.damaged(Damage{Host: c.cfg.Host, Kind: "manifest", Digest: d, File: c.store.blobPath(d)})
		return "", nil, false
	case err != nil:
		return "", nil, false
	}
	c.manifests.put(d, memEntry{stamp: stampOf(fi), mediaType: mt, payload: payload})
	return mt, payload, true
}
