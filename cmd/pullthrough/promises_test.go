package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/fixtures"
)

// ownRunDir keeps the running-cache records this test and its commands
// make apart from every other test's and from the user's.
func ownRunDir(t *testing.T) {
	t.Helper()
	t.Setenv("PULLTHROUGH_RUN_DIR", t.TempDir())
}

// startUp runs `up` in the background, as a user would, until the test
// ends, and returns what it printed before it began serving.
func startUp(t *testing.T, args ...string) string {
	t.Helper()
	p, failed := tryUp(t, args...)
	if p == nil {
		t.Fatalf("up stopped before serving: %s", failed)
	}
	return p.printed
}

// upOnDrawnPorts is startUp on n ports drawn by onDrawnPorts: args(base)
// names them. It returns the base and the running up.
func upOnDrawnPorts(t *testing.T, n int, args func(base int) []string) (int, *upProc) {
	t.Helper()
	var p *upProc
	base, failed := onDrawnPorts(t, n, func(base int) string {
		var failed string
		p, failed = tryUp(t, args(base)...)
		return failed
	})
	if p == nil {
		t.Fatalf("up stopped before serving: %s", failed)
	}
	return base, p
}

// upProc is an `up` that began serving.
type upProc struct {
	cmd     *exec.Cmd
	printed string        // before it began serving
	rest    *lockedBuffer // after
	done    chan struct{} // closed when its standard output ends
}

// tryUp starts `up` as startUp does. When up stops before serving, it
// returns nil and everything up printed instead.
func tryUp(t *testing.T, args ...string) (*upProc, string) {
	t.Helper()
	up := exec.Command(binary, append([]string{"up"}, args...)...)
	stdout, err := up.StdoutPipe()
	require.NoError(t, err)
	var upErr lockedBuffer
	up.Stderr = &upErr
	require.NoError(t, up.Start())
	t.Cleanup(func() { _ = up.Process.Kill(); _ = up.Wait() })
	sc := bufio.NewScanner(stdout)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if strings.HasPrefix(sc.Text(), "# Talos config patches") {
			p := &upProc{cmd: up, printed: strings.Join(lines, "\n"), rest: &lockedBuffer{}, done: make(chan struct{})}
			go func() {
				defer close(p.done)
				for sc.Scan() {
					fmt.Fprintln(p.rest, sc.Text())
				}
			}()
			return p, ""
		}
	}
	_ = up.Wait()
	return nil, strings.Join(lines, "\n") + upErr.String()
}

func upstreamFlags(ups *fixtures.Upstreams) []string {
	var out []string
	for _, u := range ups.Upstreams() {
		out = append(out, "--upstream", u.Host()+"="+u.URL())
	}
	return out
}

// purge and gc remove what the caches stored and nothing else, and refuse
// while a cache serves from the storage, naming it and its process.
func TestPurgeRemovesOnlyWhatTheCachesStored(t *testing.T) {
	ownRunDir(t)
	ups := fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.001), fixtures.Unthrottled())
	storage := t.TempDir()
	mine := filepath.Join(storage, "notes.txt")
	require.NoError(t, os.WriteFile(mine, []byte("mine"), 0o644))
	tool := filepath.Join(storage, "bin", "tool")
	require.NoError(t, os.MkdirAll(filepath.Dir(tool), 0o755))
	require.NoError(t, os.WriteFile(tool, []byte("#!/bin/sh\n"), 0o755))

	common := append([]string{"--storage", storage}, upstreamFlags(ups)...)
	r := cli(t, "", append([]string{"prefetch", "--talos", "v1.13.0"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	dirs, err := cache.StorageDirs(storage)
	require.NoError(t, err)
	require.NotEmpty(t, dirs)
	beside := filepath.Join(dirs[0].Path, "README")
	require.NoError(t, os.WriteFile(beside, []byte("someone's"), 0o644))

	// A running cache on the storage: refused, naming the directory and
	// the process.
	set, err := cache.Start(t.Context(), cache.WithUpstreams(cache.Upstream{Host: ups.Upstreams()[0].Host(), URL: ups.Upstreams()[0].URL()}),
		cache.WithStorageDir(storage), cache.WithListenAddrs("127.0.0.1"))
	require.NoError(t, err)
	t.Cleanup(func() { set.Close() })
	busy := cache.StorageDirFor(storage, set.Caches()[0].Upstream())
	for _, args := range [][]string{{"purge", "--storage", storage}, {"gc", "--max-size", "0", "--storage", storage}} {
		r = cli(t, "", args...)
		assert.Equal(t, 1, r.code, "%v: %s", args, r.stdout+r.stderr)
		assert.Contains(t, r.stderr, busy, "%v names the directory in use", args)
		assert.Contains(t, r.stderr, fmt.Sprintf("process %d", os.Getpid()), "%v names the process", args)
	}
	require.NoError(t, set.Close())

	r = cli(t, "", "gc", "--max-size", "0", "--storage", storage)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "kept")
	r = cli(t, "", "purge", "--storage", storage)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "kept (not the caches' content)")
	assert.Contains(t, r.stdout, mine, "purge says what it keeps")
	for _, p := range []string{mine, tool, beside} {
		_, err := os.Stat(p)
		assert.NoError(t, err, "%s survives purge", p)
	}
	dirs, err = cache.StorageDirs(storage)
	require.NoError(t, err)
	assert.Empty(t, dirs, "purge leaves no cache content")
}

// flipByte damages the largest stored blob: same size, one byte changed.
func flipByte(t *testing.T, storage string) string {
	t.Helper()
	dirs, err := cache.StorageDirs(storage)
	require.NoError(t, err)
	var path string
	var size int64
	for _, d := range dirs {
		ents, _ := os.ReadDir(d.Blobs)
		for _, e := range ents {
			if info, err := e.Info(); err == nil && info.Size() > size {
				path, size = filepath.Join(d.Blobs, e.Name()), info.Size()
			}
		}
	}
	require.NotEmpty(t, path, "no stored blob")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[len(b)/2] ^= 0xff
	require.NoError(t, os.WriteFile(path, b, 0o644))
	return path
}

// verify names a stored file whose bytes do not match its digest, with no
// raw log lines; prefetch fetches it again and says so.
func TestDamagedBlobIsNamedAndRepaired(t *testing.T) {
	ownRunDir(t)
	ups := fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.002), fixtures.Unthrottled())
	storage := t.TempDir()
	common := append([]string{"--talos", "v1.13.0", "--storage", storage}, upstreamFlags(ups)...)
	r := cli(t, "", append([]string{"prefetch"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)

	damaged := flipByte(t, storage)
	r = cli(t, "", append([]string{"verify"}, common...)...)
	assert.Equal(t, 3, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stdout, "damaged  "+damaged, "verify names the damaged file")
	assert.NotContains(t, r.stdout+r.stderr, "level=", "no raw log records")
	assert.NotContains(t, r.stdout+r.stderr, "strict mode", "no mode the user never chose")
	assert.NotContains(t, r.stdout+r.stderr, "127.0.0.1", "no address of the command's own caches")
	r = cli(t, "", append([]string{"prefetch"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	r = cli(t, "", append([]string{"verify"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)

	// Damaged and prefetched at once: repaired, and not called cached.
	damaged = flipByte(t, storage)
	r = cli(t, "", append([]string{"prefetch"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stdout, "repaired "+damaged)
	assert.Contains(t, r.stdout, "1 damaged files fetched again")
	r = cli(t, "", append([]string{"verify"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
}

// Commands find a running cache with no flags repeated: status, config,
// prefetch (into the running cache's storage), verify, export.
func TestCommandsFindWhatRuns(t *testing.T) {
	ownRunDir(t)
	// The user's default storage must stay untouched.
	home := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", filepath.Join(home, ".cache"))
	ups := fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.002), fixtures.Unthrottled())
	storage := t.TempDir()
	base, up := upOnDrawnPorts(t, len(ups.Upstreams()), func(base int) []string {
		return append([]string{"--ports-from", fmt.Sprint(base), "--storage", storage, "--bridge", "10.99.0.1"}, upstreamFlags(ups)...)
	})
	printed := up.printed
	assert.NotContains(t, printed, "docker0's 10.99.0.1", "--bridge is not docker0")
	assert.Contains(t, printed, fmt.Sprintf("talosctl cluster create docker --registry-mirror '*=http://10.99.0.1:%d'", base), "the one-line form")

	for _, args := range [][]string{{"status"}, {"status", "--ports-from", fmt.Sprint(base)}} {
		r := cli(t, "", args...)
		require.Equal(t, 0, r.code, r.stderr)
		for _, u := range ups.Upstreams() {
			assert.Contains(t, r.stdout, u.Host(), "%v finds %s", args, u.Host())
		}
		assert.Contains(t, r.stdout, storage, "%v", args)
	}
	r := cli(t, "", "status", "--json")
	require.Equal(t, 0, r.code, r.stderr)
	var found []running
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &found))
	assert.Len(t, found, len(ups.Upstreams()))

	// A second up on the same ports: the clash in words, and a hint that
	// leads to the caches that hold them.
	r = cli(t, "", append([]string{"up", "--ports-from", fmt.Sprint(base), "--storage", t.TempDir(), "--mode", "strict"}, upstreamFlags(ups)...)...)
	assert.Equal(t, 1, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stderr, "pullthrough status")
	assert.NotRegexp(t, `[0-9a-f]{12}/`, r.stderr, "identity hashes mean nothing to a user")

	r = cli(t, "", "config", "--format", "talos-patch", "--bridge", "127.0.0.1")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, fmt.Sprintf("url: http://127.0.0.1:%d", base))

	r = cli(t, "", "prefetch", "--talos", "v1.13.0")
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stdout, "through the running caches")
	// Which client pulled what: prefetch pulled from loopback.
	r = cli(t, "", "status", "--clients")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "CLIENT")
	assert.Regexp(t, `registry\.k8s\.io\s+127\.0\.0\.1:\d+\s+127\.0\.0\.1\s+[1-9]\d*\s`, r.stdout, "per-client lines")
	for _, args := range [][]string{{"verify", "--talos", "v1.13.0"}, {"export", "--oci", t.TempDir(), "--talos", "v1.13.0"}} {
		r = cli(t, "", args...)
		require.Equal(t, 0, r.code, "%v: %s", args, r.stdout+r.stderr)
		assert.NotContains(t, r.stdout+r.stderr, "level=", "%v: no raw log records", args)
	}
	// What prefetch fetched is in the running cache's storage, nowhere else.
	assert.Positive(t, du(storage))
	assert.Zero(t, du(home), "prefetch wrote to the default storage")
}

// export --oci of images with Docker media types is readable by skopeo,
// carries no artifactType, and replaces an entry exported again.
func TestExportOCIDockerMediaTypes(t *testing.T) {
	ownRunDir(t)
	reg := httptest.NewServer(registry.New())
	t.Cleanup(reg.Close)
	img, err := random.Image(2048, 2)
	require.NoError(t, err)
	mt, err := img.MediaType()
	require.NoError(t, err)
	require.Contains(t, string(mt), "docker", "random images have Docker media types")
	host := strings.TrimPrefix(reg.URL, "http://")
	ref, err := name.ParseReference(host+"/lib/app:v1", name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img))

	storage := t.TempDir()
	common := []string{"--storage", storage, "--upstream", "reg.local=" + reg.URL}
	r := cli(t, "", append([]string{"prefetch", "reg.local/lib/app:v1"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	out := t.TempDir()
	for range 2 {
		r = cli(t, "", append([]string{"export", "--oci", out, "reg.local/lib/app:v1"}, common...)...)
		require.Equal(t, 0, r.code, r.stdout+r.stderr)
	}
	b, err := os.ReadFile(filepath.Join(out, "index.json"))
	require.NoError(t, err)
	var idx struct {
		Manifests []map[string]any `json:"manifests"`
	}
	require.NoError(t, json.Unmarshal(b, &idx))
	require.Len(t, idx.Manifests, 1, "exported twice, one entry: %s", b)
	assert.NotContains(t, idx.Manifests[0], "artifactType", string(b))
	assert.Equal(t, "application/vnd.oci.image.manifest.v1+json", idx.Manifests[0]["mediaType"])

	// go-containerregistry (crane's layout reader) reads it, digests checked.
	p, err := layout.FromPath(out)
	require.NoError(t, err)
	ii, err := p.ImageIndex()
	require.NoError(t, err)
	im, err := ii.IndexManifest()
	require.NoError(t, err)
	got, err := ii.Image(im.Manifests[0].Digest)
	require.NoError(t, err)
	layers, err := got.Layers()
	require.NoError(t, err)
	for _, l := range layers {
		rc, err := l.Compressed()
		require.NoError(t, err)
		_, err = io.Copy(io.Discard, rc)
		require.NoError(t, err)
		rc.Close()
	}
	wantCfg, _ := img.ConfigName()
	gotCfg, _ := got.ConfigName()
	assert.Equal(t, wantCfg, gotCfg, "the config is the same bytes")

	t.Run("ctr import", func(t *testing.T) { ctrImport(t, out, "reg.local/lib/app:v1") })

	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true and skopeo is required (scripts/docker-up installs it)")
		}
		t.Skip("skopeo not installed (scripts/docker-up installs it)")
	}
	sk, err := exec.Command(skopeo, "inspect", "oci:"+out+":reg.local/lib/app:v1").CombinedOutput()
	require.NoError(t, err, "skopeo inspect: %s", sk)
	var inspected struct{ Layers []string }
	require.NoError(t, json.Unmarshal(sk, &inspected), string(sk))
	assert.Len(t, inspected.Layers, 2)
}

// Every usage error exits 2, names the flag and the form it wants, and
// speaks of flags, not of Go fields.
func TestUsageErrorsNameTheFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"up", "--upstream", "reg.local=127.0.0.1:1"}, "reg.local=http://127.0.0.1:1"},
		{[]string{"up", "--upstream", "a b=http://x"}, "--upstream"},
		{[]string{"up", "--upstream", "a.io=http://x", "--upstream", "a.io=http://y"}, "given twice"},
		{[]string{"up", "--upstream", "a.io=http://u:secret@x"}, "--credential-helper"},
		{[]string{"config"}, "--format is required"},
		{[]string{"gc"}, "--max-size is required"},
		{[]string{"config", "--format", "k3s", "--skip-fallback"}, "--skip-fallback"},
		{[]string{"config", "--format", "kind", "--skip-fallback"}, "--skip-fallback"},
		{[]string{"config", "--format", "docker", "--skip-fallback"}, "--skip-fallback"},
		{[]string{"status", "oops"}, "unexpected argument"},
	} {
		r := cli(t, "", c.args...)
		assert.Equal(t, 2, r.code, "%v: %s", c.args, r.stderr)
		assert.Contains(t, r.stderr, c.want, "%v", c.args)
		assert.Equal(t, 1, strings.Count(r.stderr, "pullthrough:"), "%v: one message: %s", c.args, r.stderr)
		for _, field := range []string{"Credentials", "BasicAuth", "secret", "required flag", "pullthrough: pullthrough"} {
			assert.NotContains(t, r.stderr, field, "%v", c.args)
		}
	}
	r := cli(t, "", "up", "-h")
	require.Equal(t, 0, r.code)
	assert.NotContains(t, r.stdout, "--detach docker", "a back-quoted word became a value name")
	assert.NotContains(t, r.stdout, "--from talosctl")
	r = cli(t, "", "prefetch", "-h")
	assert.NotContains(t, r.stdout, "--from talosctl")
}

// ctrImport imports the layout, as a tar, with containerd's ctr into a
// namespace of the test's own, and removes the namespace after. It needs
// the containerd of Docker's daemon (Debian's dockerd runs one) and root.
func ctrImport(t *testing.T, dir, ref string) {
	const sock = "/var/run/docker/containerd/containerd.sock"
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		t.Skip("ctr not installed")
	}
	if _, err := os.Stat(sock); err != nil || os.Getuid() != 0 {
		t.Skipf("no containerd socket at %s for this user", sock)
	}
	ns := fmt.Sprintf("pullthrough-test-%d", os.Getpid())
	run := func(args ...string) (string, error) {
		b, err := exec.Command(ctr, append([]string{"--address", sock, "-n", ns}, args...)...).CombinedOutput()
		return string(b), err
	}
	t.Cleanup(func() {
		_, _ = run("images", "rm", ref)
		if list, err := run("content", "ls", "-q"); err == nil {
			for _, d := range strings.Fields(list) {
				_, _ = run("content", "rm", d)
			}
		}
		_, _ = exec.Command(ctr, "--address", sock, "namespaces", "rm", ns).CombinedOutput()
	})
	tarball := filepath.Join(t.TempDir(), "layout.tar")
	b, err := exec.Command("tar", "-C", dir, "-cf", tarball, ".").CombinedOutput()
	require.NoError(t, err, string(b))
	out, err := run("images", "import", "--no-unpack", tarball)
	require.NoError(t, err, out)
	out, err = run("images", "ls", "-q")
	require.NoError(t, err, out)
	assert.Contains(t, strings.Fields(out), ref, "ctr lists the imported image")
}

// A failed pull is said once, in the registry's terms: not the address of
// a cache the command started for itself.
func TestFailureSaidOnce(t *testing.T) {
	ownRunDir(t)
	reg := httptest.NewServer(registry.New())
	t.Cleanup(reg.Close)
	r := cli(t, "", "prefetch", "reg.local/lib/none:v1", "--storage", t.TempDir(), "--upstream", "reg.local="+reg.URL)
	assert.Equal(t, 1, r.code, r.stdout+r.stderr)
	assert.Equal(t, 1, strings.Count(r.stderr, "not found"), "the error once: %s", r.stderr)
	assert.NotContains(t, r.stderr, "GET http://", r.stderr)
	assert.Contains(t, r.stderr, "reg.local/lib/none", r.stderr)
}

// Caches on loopback only are printed as mirrors for no one.
func TestLoopbackOnlyPrintsNoMirrors(t *testing.T) {
	ownRunDir(t)
	ups := fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.001), fixtures.Unthrottled())
	printed := startUp(t, append([]string{"--os-ports", "--loopback-only", "--storage", t.TempDir()}, upstreamFlags(ups)...)...)
	assert.NotContains(t, printed, "--registry-mirror", "no node reaches a loopback cache")
	r := cli(t, "", "config", "--format", "k3s", "--bridge", "10.99.0.1")
	assert.Equal(t, 1, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stderr, "--loopback-only")
	assert.Empty(t, r.stdout)
	r = cli(t, "", "config", "--format", "k3s", "--bridge", "127.0.0.1")
	assert.Equal(t, 0, r.code, r.stdout+r.stderr)
}
