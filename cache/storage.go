package cache

import (
	"os"
	"path/filepath"
	"sort"

	"github.com/pullthrough/pullthrough/internal/engine"
)

// StorageDir is one cache's storage directory under a storage root.
type StorageDir struct {
	// Path is the directory: <root>/<host>-<hash of URL>.
	Path string
	// Content is the one directory in Path the engine writes; removing it
	// removes what the cache stored and nothing else.
	Content string
	// Blobs holds the stored blobs and manifests, a file per sha256
	// digest named by its hex (least recently served by mtime, to the hour).
	Blobs string
	// InUse says a running cache (of any process) serves from it.
	InUse bool
}

// BlobsDir is Blobs for a cache's storage directory (Cache.StorageDir).
func BlobsDir(storageDir string) string { return engine.BlobsDir(storageDir) }

// StorageDirs lists the caches' storage directories under root: those that
// hold the engine's layout. Anything else under root (a user's file, the
// project's other tools) is not listed.
func StorageDirs(root string) ([]StorageDir, error) {
	ents, err := os.ReadDir(root)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []StorageDir
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		if !engine.IsStorageDir(dir) {
			continue
		}
		inUse, err := engine.InUse(dir)
		if err != nil {
			return nil, err
		}
		out = append(out, StorageDir{Path: dir, Content: filepath.Join(dir, engine.LayoutDir), Blobs: engine.BlobsDir(dir), InUse: inUse})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// StorageDirFor is where an upstream's cache keeps its content under root.
func StorageDirFor(root string, u Upstream) string { return filepath.Join(root, u.storageName()) }
