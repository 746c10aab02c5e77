package initramfs_test

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/internal/initramfs"
)

// parsed is one record read back with a reader of the test's own, written
// from the format's description rather than from Write.
type parsed struct {
	name       string
	mode       uint64
	rmaj, rmin uint64
	data       string
}

func readNewc(t *testing.T, b []byte) []parsed {
	t.Helper()
	var out []parsed
	field := func(h []byte, i int) uint64 {
		v, err := strconv.ParseUint(string(h[6+8*i:6+8*i+8]), 16, 32)
		require.NoError(t, err)
		return v
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	off := 0
	for {
		require.GreaterOrEqual(t, len(b)-off, 110, "truncated header at %d", off)
		h := b[off : off+110]
		require.Equal(t, "070701", string(h[:6]))
		size, nameLen := int(field(h, 6)), int(field(h, 11))
		name := string(b[off+110 : off+110+nameLen-1])
		dataOff := align(off + 110 + nameLen)
		p := parsed{name: name, mode: field(h, 1), rmaj: field(h, 9), rmin: field(h, 10), data: string(b[dataOff : dataOff+size])}
		off = align(dataOff + size)
		if name == "TRAILER!!!" {
			require.Equal(t, len(b), off, "bytes after the trailer")
			return out
		}
		out = append(out, p)
	}
}

func TestWriteMakesParentsAndReadsBack(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, initramfs.Write(&buf, []initramfs.Entry{
		{Path: "init", Mode: 0o755, Data: []byte("#!hello")},
		{Path: "lib/modules/a.ko", Mode: 0o644, Data: []byte("abcde")},
		{Path: "dev/console", Mode: 0o600, Dev: &[2]uint32{5, 1}},
	}))
	got := readNewc(t, buf.Bytes())
	var names []string
	for _, p := range got {
		names = append(names, p.name)
	}
	assert.Equal(t, []string{"dev", "dev/console", "init", "lib", "lib/modules", "lib/modules/a.ko"}, names)
	assert.Equal(t, uint64(0o040755), got[0].mode)
	assert.Equal(t, uint64(0o020600), got[1].mode)
	assert.Equal(t, [2]uint64{5, 1}, [2]uint64{got[1].rmaj, got[1].rmin})
	assert.Equal(t, uint64(0o100755), got[2].mode)
	assert.Equal(t, "#!hello", got[2].data)
	assert.Equal(t, "abcde", got[5].data)

	// The same input gives the same bytes: the archive is a cache key.
	var again bytes.Buffer
	require.NoError(t, initramfs.Write(&again, []initramfs.Entry{
		{Path: "dev/console", Mode: 0o600, Dev: &[2]uint32{5, 1}},
		{Path: "lib/modules/a.ko", Mode: 0o644, Data: []byte("abcde")},
		{Path: "init", Mode: 0o755, Data: []byte("#!hello")},
	}))
	assert.Equal(t, buf.Bytes(), again.Bytes())
}

// GNU cpio, where installed, agrees with the reader above.
func TestGNUCpioListsTheArchive(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio is not installed; the format is checked by readNewc")
	}
	var buf bytes.Buffer
	require.NoError(t, initramfs.Write(&buf, []initramfs.Entry{{Path: "a/b", Mode: 0o644, Data: []byte("x")}}))
	cmd := exec.Command("cpio", "-t")
	cmd.Stdin = &buf
	out, err := cmd.Output()
	require.NoError(t, err)
	assert.Equal(t, "a\na/b", strings.TrimSpace(string(out)))
}

func TestBadEntriesAreNamed(t *testing.T) {
	for _, tc := range []struct {
		entries []initramfs.Entry
		want    string
	}{
		{[]initramfs.Entry{{Path: "/"}}, `entry "/": want a path below the root`},
		{[]initramfs.Entry{{Path: "x", Data: []byte{1}, Dir: true}}, `entry "x": want one of`},
		{[]initramfs.Entry{{Path: "x", Data: []byte{1}}, {Path: "/x", Dir: true}}, `entry "/x": given twice`},
	} {
		err := initramfs.Write(&bytes.Buffer{}, tc.entries)
		assert.ErrorContains(t, err, tc.want)
	}
}
