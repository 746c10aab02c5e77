package engine

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The sweep removes what interrupted fills left (part and size files whose
// lock nobody holds, stale manifest locks, old temporary files) and leaves a
// fill in progress alone.
func TestSweepRemovesLeftoversAndKeepsFillsInProgress(t *testing.T) {
	s, err := openStore(t.TempDir())
	require.NoError(t, err)
	defer s.close()
	dead, live := digest.FromString("dead"), digest.FromString("live")
	for _, d := range []digest.Digest{dead, live} {
		require.NoError(t, os.WriteFile(s.fillPath(d, ".part"), []byte("partial"), 0o644))
		require.NoError(t, os.WriteFile(s.fillPath(d, ".size"), []byte("100"), 0o644))
	}
	held, err := s.tryLock(s.fillPath(live, ".lock"))
	require.NoError(t, err)
	require.NotNil(t, held)
	defer held.release(true)
	stale := s.manifestLockPath("lib/app", "v1")
	require.NoError(t, os.WriteFile(stale, nil, 0o644))
	old := time.Now().Add(-time.Hour)
	require.NoError(t, os.Chtimes(stale, old, old))
	tmp := filepath.Join(s.root, "tmp", "w-old")
	require.NoError(t, os.WriteFile(tmp, []byte("x"), 0o644))
	require.NoError(t, os.Chtimes(tmp, old, old))

	files, bytes := s.sweep(time.Now())
	assert.Equal(t, 4, files, "dead part and size, the stale lock, the old temporary file")
	assert.EqualValues(t, len("partial")+len("100")+1, bytes)
	for _, p := range []string{s.fillPath(dead, ".part"), s.fillPath(dead, ".size"), stale, tmp} {
		assert.NoFileExists(t, p)
	}
	assert.FileExists(t, s.fillPath(live, ".part"), "a fill whose lock is held is left alone")
}

// A lock file replaced under tryLock (removed by its holder, made again by
// another) is not mistaken for the current one.
func TestTryLockTakesTheCurrentLockFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.lock")
	a, err := tryLock(path)
	require.NoError(t, err)
	require.NotNil(t, a)
	b, err := tryLock(path)
	require.NoError(t, err)
	assert.Nil(t, b, "held by a")
	a.release(true) // removes the file while still held, then unlocks
	c, err := tryLock(path)
	require.NoError(t, err)
	require.NotNil(t, c)
	defer c.release(true)
	st, err := os.Stat(path)
	require.NoError(t, err)
	held, err := c.f.Stat()
	require.NoError(t, err)
	assert.True(t, os.SameFile(st, held), "the lock held is the file at the path")
}

// A stored manifest whose bytes rotted is written again by putManifest, not
// skipped because its size matches.
func TestPutManifestRewritesADamagedOne(t *testing.T) {
	s, err := openStore(t.TempDir())
	require.NoError(t, err)
	defer s.close()
	payload := []byte(`{"schemaVersion":2}`)
	d := digest.FromBytes(payload)
	require.NoError(t, s.putManifest(d, "application/vnd.oci.image.manifest.v1+json", payload))
	damaged := append([]byte(nil), payload...)
	damaged[3] ^= 1
	require.NoError(t, os.WriteFile(s.blobPath(d), damaged, 0o644))
	_, _, err = s.readManifest(d)
	assert.ErrorIs(t, err, errDamaged)
	require.NoError(t, s.putManifest(d, "application/vnd.oci.image.manifest.v1+json", payload))
	_, got, err := s.readManifest(d)
	require.NoError(t, err)
	assert.Equal(t, payload, got)
}

// InUse sees a running cache's storage, whatever its ports.
func TestInUseWhileTheStoreIsOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(dir)
	require.NoError(t, err)
	inUse, err := InUse(dir)
	require.NoError(t, err)
	assert.True(t, inUse)
	s.close()
	inUse, err = InUse(dir)
	require.NoError(t, err)
	assert.False(t, inUse)
	assert.True(t, IsStorageDir(dir))
	assert.False(t, IsStorageDir(t.TempDir()))
}
