package engine

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
)

var cacheDirRE = regexp.MustCompile(`^[a-z0-9._-]+-[0-9a-f]{8}$`)

// dropOldLayout removes what an earlier pullthrough stored in
// distribution's layout (docker/registry/v2), which this engine neither
// reads nor cleans otherwise: cached content only, fetched again on demand.
func (c *Cache) dropOldLayout() {
	old := filepath.Join(c.cfg.StorageDir, "docker", "registry", "v2")
	if _, err := os.Stat(old); err != nil || !cacheDirRE.MatchString(filepath.Base(c.cfg.StorageDir)) {
		// Only in a directory cachetest named (<host>-<8 hex digits>):
		// never in a registry's own data directory given by hand.
		return
	}
	if err := os.RemoveAll(filepath.Join(c.cfg.StorageDir, "docker")); err != nil {
		c.log.Warn("removing the previous storage layout", "dir", old, "error", err)
		return
	}
	c.log.Info("removed content stored in the previous layout (distribution's); it is fetched again when asked for", "dir", old)
}

func checkWritable(dir string) error {
	if dir == "" {
		return errors.New("no directory given")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".write-check-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(filepath.Clean(name))
}
