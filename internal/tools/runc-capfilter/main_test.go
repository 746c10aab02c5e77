package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sandboxBounding is the CapBnd this project's sandbox reports: every
// capability up to CAP_CHECKPOINT_RESTORE (40) except CAP_SYS_RESOURCE (24).
const sandboxBounding = 0x000001fffeffffff

func TestParseCapBnd(t *testing.T) {
	status := "Name:\tcat\nCapInh:\t0000000000000000\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\n"
	got, err := parseCapBnd(status)
	require.NoError(t, err)
	assert.Equal(t, uint64(sandboxBounding), got)

	_, err = parseCapBnd("Name:\tcat\n")
	assert.Error(t, err)
}

func TestFilterSpec(t *testing.T) {
	all := []string{"CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_CHECKPOINT_RESTORE", "CAP_FUTURE_THING"}
	spec := map[string]any{
		"ociVersion": "1.0.2-dev",
		"process": map[string]any{
			"args": []string{"/hello", "<a&b>"},
			"capabilities": map[string]any{
				"bounding":    all,
				"effective":   all,
				"inheritable": all,
				"permitted":   all,
				"ambient":     []string{"CAP_SYS_RESOURCE"},
			},
			"noNewPrivileges": false,
		},
		"linux": map[string]any{"namespaces": []map[string]string{{"type": "pid"}}},
	}
	in, err := marshal(spec) // unescaped, as runtimes write it
	require.NoError(t, err)

	out, changed, err := filterSpec(in, sandboxBounding)
	require.NoError(t, err)
	require.True(t, changed)

	var got map[string]any
	require.NoError(t, json.Unmarshal(out, &got))
	caps := got["process"].(map[string]any)["capabilities"].(map[string]any)
	want := []any{"CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE", "CAP_FUTURE_THING"}
	for _, set := range []string{"bounding", "effective", "inheritable", "permitted"} {
		assert.Equal(t, want, caps[set], set)
	}
	assert.Equal(t, []any{}, caps["ambient"])

	// Everything outside the capability sets survives untouched.
	assert.Equal(t, "1.0.2-dev", got["ociVersion"])
	assert.Equal(t, []any{"/hello", "<a&b>"}, got["process"].(map[string]any)["args"])
	assert.Equal(t, false, got["process"].(map[string]any)["noNewPrivileges"])
	assert.Contains(t, got, "linux")
	assert.Contains(t, string(out), "<a&b>", "HTML characters must not be escaped")
}

func TestFilterSpecUnchanged(t *testing.T) {
	in := []byte(`{"process":{"capabilities":{"bounding":["CAP_CHOWN"]}},"x":1}`)
	out, changed, err := filterSpec(in, sandboxBounding)
	require.NoError(t, err)
	assert.False(t, changed)
	assert.Equal(t, in, out)

	in = []byte(`{"process":{"args":["/x"]}}`)
	_, changed, err = filterSpec(in, sandboxBounding)
	require.NoError(t, err)
	assert.False(t, changed)
}

func TestSplitCommandAndBundle(t *testing.T) {
	args := []string{"--root", "/run/docker/runtime-runc/moby", "--log", "/x/log.json", "--log-format", "json", "--systemd-cgroup",
		"create", "--bundle", "/b", "--pid-file", "/p", "id"}
	cmd, rest := splitCommand(args)
	assert.Equal(t, "create", cmd)
	assert.Equal(t, "/b", flagValue(rest, "bundle", "b"))

	cmd, rest = splitCommand([]string{"--root=/r", "run", "-b=/c", "id"})
	assert.Equal(t, "run", cmd)
	assert.Equal(t, "/c", flagValue(rest, "bundle", "b"))

	cmd, _ = splitCommand([]string{"--root", "/r", "state", "id"})
	assert.Equal(t, "state", cmd)
}

func TestFilterFileRewritesInPlace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"process":{"capabilities":{"bounding":["CAP_SYS_RESOURCE","CAP_KILL"]}}}`), 0o600))

	require.NoError(t, filterForCommand([]string{"create", "--bundle", dir, "id"}))

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var got map[string]any
	require.NoError(t, json.Unmarshal(data, &got))
	bounding := got["process"].(map[string]any)["capabilities"].(map[string]any)["bounding"]
	own, err := boundingSet()
	require.NoError(t, err)
	if own&(1<<24) == 0 {
		assert.Equal(t, []any{"CAP_KILL"}, bounding)
	} else {
		assert.Equal(t, []any{"CAP_SYS_RESOURCE", "CAP_KILL"}, bounding)
	}
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}
