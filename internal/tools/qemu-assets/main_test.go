package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kernelRoot is the Debian kernel scripts/qemu-up extracted, if it did.
func kernelRoot(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PULLTHROUGH_QEMU_ASSETS")
	if dir == "" {
		c, err := os.UserCacheDir()
		require.NoError(t, err)
		dir = filepath.Join(c, "pullthrough", "qemu")
	}
	roots, _ := filepath.Glob(filepath.Join(dir, "kernel", "linux-image-*"))
	if len(roots) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and no kernel under %s: scripts/qemu-up extracts it", dir)
		}
		t.Skipf("no Debian kernel under %s (scripts/qemu-up extracts it)", dir)
	}
	return roots[0]
}

func TestModulesComeAfterWhatTheyDependOn(t *testing.T) {
	root := kernelRoot(t)
	dirs, _ := filepath.Glob(filepath.Join(root, "lib", "modules", "*", "kernel"))
	require.Len(t, dirs, 1)
	mods, err := closure(dirs[0], wantedModules)
	require.NoError(t, err)
	var names []string
	for _, m := range mods {
		for _, d := range m.deps {
			assert.Contains(t, names, d, "%s loads before its dependency %s", m.name, d)
		}
		names = append(names, m.name)
	}
	for _, w := range append(slices.Clone(wantedModules), "failover", "net_failover") {
		assert.Contains(t, names, w)
	}

	_, err = closure(dirs[0], []string{"pt_no_such_module"})
	assert.ErrorContains(t, err, "kernel module pt_no_such_module (needed by qemu-assets) is not in")
}

func TestBuildWritesKernelAndInitramfs(t *testing.T) {
	root := kernelRoot(t)
	init := filepath.Join(t.TempDir(), "init")
	require.NoError(t, os.WriteFile(init, []byte("not really an init"), 0o755))
	out := t.TempDir()
	require.NoError(t, build(root, init, out))
	for _, n := range []string{KernelName, InitramfsName} {
		st, err := os.Stat(filepath.Join(out, n))
		require.NoError(t, err)
		assert.Positive(t, st.Size())
	}
	assert.ErrorContains(t, build(t.TempDir(), init, out), "want one boot/vmlinuz-*")
}
