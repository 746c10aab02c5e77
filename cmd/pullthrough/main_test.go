package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/internal/testnet"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/pelletier/go-toml/v2"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/types/cri"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/fixtures"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pullthrough-cli-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "pullthrough")
	// Running-cache records of this run's commands stay out of the user's.
	if os.Getenv("PULLTHROUGH_RUN_DIR") == "" {
		os.Setenv("PULLTHROUGH_RUN_DIR", filepath.Join(dir, "run"))
	}
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as `up --detach` needs
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the command: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func cli(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var out, errOut bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{code, out.String(), errOut.String()}
}

func TestUsageErrors(t *testing.T) {
	r := cli(t, "", "-h")
	assert.Equal(t, 0, r.code, "-h exits 0")
	assert.Contains(t, r.stdout, "prefetch")
	for _, args := range [][]string{{"oops"}, {"up", "oops", "--mode", "bogus"}, {"config", "--format", "yaml"}, {"up", "--nope"}, {"gc", "--max-size", "lots"}, {"up", "--tier", "nohost=http://x"}} {
		r := cli(t, "", args...)
		assert.Equal(t, 2, r.code, "%v: %s", args, r.stderr)
		assert.Equal(t, 1, strings.Count(r.stderr, "pullthrough:"), "one message: %s", r.stderr)
	}
	r = cli(t, "", "verify", "--storage", t.TempDir(), "--from", "-")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "no images")
	r = cli(t, "registry.k8s.io/pause:3.10.1\nNot A Ref!\n", "verify", "--storage", t.TempDir(), "--from", "-")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "stdin line 2", "a bad reference names its line")
}

// onDrawnPorts calls start with drawn bases of n ports until what it
// returns does not report a port in use (another program took one first),
// ten draws at most. It returns the base and start's last output.
func onDrawnPorts(t *testing.T, n int, start func(base int) (output string)) (int, string) {
	t.Helper()
	var out string
	for range 10 {
		base := testnet.DrawBase(n) // the child's own bind checks them
		if out = start(base); !strings.Contains(out, cache.ErrPortInUse.Error()) {
			return base, out
		}
		t.Logf("ports from %d: %s; drawing again", base, lastLine(out))
	}
	t.Fatalf("ten draws of %d ports were all in use: %s", n, out)
	return 0, ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func TestEndToEnd(t *testing.T) {
	ups := fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.002), fixtures.Unthrottled())
	storage := t.TempDir()
	common := []string{"--storage", storage}
	for _, u := range ups.Upstreams() {
		common = append(common, "--upstream", u.Host()+"="+u.URL())
	}
	// up, in the background, as a user would.
	base, up := upOnDrawnPorts(t, len(ups.Upstreams()), func(base int) []string {
		return append([]string{"--bridge", "127.0.0.1", "--ports-from", fmt.Sprint(base)}, common...)
	})
	withPorts := append([]string{"--ports-from", fmt.Sprint(base)}, common...)

	// verify finds what up's caches do not have yet: exit 3, naming an image.
	r := cli(t, "", append([]string{"verify", "--talos", "v1.13.0"}, common...)...)
	assert.Equal(t, 3, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stdout, "missing  registry.k8s.io/pause:3.10.1")

	text := up.printed
	require.Contains(t, text, "talosctl cluster create docker \\", "the docker provisioner's form: %s", text)
	assert.Contains(t, text, "talosctl cluster create qemu --cidr 10.5.0.0/24 \\")
	assert.Contains(t, text, fmt.Sprintf("--registry-mirror registry.k8s.io=http://10.5.0.1:%d", base+indexOf(ups, "registry.k8s.io")))

	// prefetch through its own caches on the same storage, then verify.
	r = cli(t, "", append([]string{"prefetch", "--talos", "v1.13.0"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	r = cli(t, "", append([]string{"verify", "--talos", "v1.13.0"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stdout, "are fully cached")

	// status finds the running caches.
	r = cli(t, "", append([]string{"status", "--json"}, withPorts...)...)
	require.Equal(t, 0, r.code, r.stderr)
	var found []running
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &found))
	assert.Len(t, found, len(ups.Upstreams()))

	t.Run("config formats parse back", func(t *testing.T) { checkConfigs(t, withPorts, ups, base) })

	// export: read back with go-containerregistry's layout, digests checked.
	out := t.TempDir()
	r = cli(t, "", append([]string{"export", "--oci", out, "--talos", "v1.13.0"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	p, err := layout.FromPath(out)
	require.NoError(t, err)
	idx, err := p.ImageIndex()
	require.NoError(t, err)
	im, err := idx.IndexManifest()
	require.NoError(t, err)
	assert.Len(t, im.Manifests, len(ups.Images()))
	for _, m := range im.Manifests {
		img, err := idx.Image(m.Digest)
		require.NoError(t, err)
		layers, err := img.Layers()
		require.NoError(t, err)
		for _, l := range layers {
			rc, err := l.Compressed() // verifies the digest at EOF
			require.NoError(t, err)
			_, err = io.Copy(io.Discard, rc)
			require.NoError(t, err, m.Annotations["org.opencontainers.image.ref.name"])
			rc.Close()
		}
	}

	// export --talos-cache: both layouts, each resolved as a node's
	// registry service resolves an image (tag file → digest file → blobs).
	for _, kind := range []string{"oci", "flat"} {
		out := filepath.Join(t.TempDir(), "cache-"+kind)
		r = cli(t, "", append([]string{"export", "--talos-cache", out, "--layout", kind, "--talos", "v1.13.0"}, common...)...)
		require.Equal(t, 0, r.code, r.stdout+r.stderr)
		root := out
		if kind == "oci" {
			root = unpackTalosCache(t, out)
		}
		for _, img := range ups.Images() {
			resolveInTalosCache(t, root, img)
		}
	}
	r = cli(t, "", append([]string{"export", "--talos-cache", out, "--talos", "v1.13.0"}, common...)...)
	assert.Equal(t, 2, r.code, "a non-empty --talos-cache directory is refused: %s", r.stderr)
	assert.Contains(t, r.stderr, "not empty")

	// SIGTERM: up prints what each cache did and exits 0.
	require.NoError(t, up.cmd.Process.Signal(syscall.SIGTERM))
	<-up.done
	require.NoError(t, up.cmd.Wait())
	assert.Contains(t, up.rest.String(), "# registry.k8s.io:")

	// gc to zero, then verify fails again.
	r = cli(t, "", append([]string{"gc", "--max-size", "0"}, common...)...)
	require.Equal(t, 0, r.code, r.stderr)
	r = cli(t, "", append([]string{"verify", "--talos", "v1.13.0"}, common...)...)
	assert.Equal(t, 3, r.code)
	r = cli(t, "", append([]string{"purge"}, common...)...)
	require.Equal(t, 0, r.code, r.stderr)
	ents, _ := os.ReadDir(storage)
	assert.Empty(t, ents)
}

func indexOf(ups *fixtures.Upstreams, host string) int {
	for i, u := range ups.Upstreams() {
		if u.Host() == host {
			return i
		}
	}
	return -1
}

func checkConfigs(t *testing.T, withPorts []string, ups *fixtures.Upstreams, base int) {
	want := map[string]string{}
	for i, u := range ups.Upstreams() {
		want[u.Host()] = fmt.Sprintf("http://127.0.0.1:%d", base+i)
	}
	conf := func(format string, extra ...string) string {
		r := cli(t, "", append(append([]string{"config", "--format", format, "--bridge", "127.0.0.1"}, extra...), withPorts...)...)
		require.Equal(t, 0, r.code, r.stderr)
		return r.stdout
	}
	// Talos's own loader reads the patch.
	patch := conf("talos-patch", "--skip-fallback")
	prov, err := configloader.NewFromBytes([]byte(patch))
	require.NoError(t, err, patch)
	got := map[string]string{}
	for _, doc := range prov.Documents() {
		m, ok := doc.(*cri.RegistryMirrorConfigV1Alpha1)
		require.True(t, ok, "%T", doc)
		require.Len(t, m.RegistryEndpoints, 1)
		if m.Name() == "*" {
			// Every port serves every registry of the set; the default
			// mirror falls back for registries the set does not cache.
			assert.Equal(t, fmt.Sprintf("http://127.0.0.1:%d", base), m.RegistryEndpoints[0].EndpointURL.String())
			assert.False(t, m.SkipFallback())
			continue
		}
		got[m.Name()] = m.RegistryEndpoints[0].EndpointURL.String()
		assert.True(t, m.SkipFallback())
	}
	assert.Equal(t, want, got)

	dir := t.TempDir()
	conf("containerd", "--dir", dir)
	got = map[string]string{}
	for h := range want {
		b, err := os.ReadFile(filepath.Join(dir, h, "hosts.toml"))
		require.NoError(t, err)
		var hosts struct {
			Server string                    `toml:"server"`
			Host   map[string]map[string]any `toml:"host"`
		}
		require.NoError(t, toml.Unmarshal(b, &hosts), string(b))
		for ep := range hosts.Host {
			got[h] = ep
		}
	}
	assert.Equal(t, want, got)
	def, err := os.ReadFile(filepath.Join(dir, "_default", "hosts.toml"))
	require.NoError(t, err, "containerd's default host")
	assert.Contains(t, string(def), fmt.Sprintf("[host.\"http://127.0.0.1:%d\"]", base))

	var k3s struct {
		Mirrors map[string]struct{ Endpoint []string } `yaml:"mirrors"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(conf("k3s")), &k3s))
	got = map[string]string{}
	for h, m := range k3s.Mirrors {
		got[h] = m.Endpoint[0]
	}
	assert.Equal(t, fmt.Sprintf("http://127.0.0.1:%d", base), got["*"], "k3s's default mirror")
	delete(got, "*")
	assert.Equal(t, want, got)

	// kind: today's config_path form, the hosts.toml files under --dir,
	// mounted into the node.
	kindDir := t.TempDir()
	var kind struct {
		Kind    string   `yaml:"kind"`
		Patches []string `yaml:"containerdConfigPatches"`
		Nodes   []struct {
			ExtraMounts []struct {
				HostPath      string `yaml:"hostPath"`
				ContainerPath string `yaml:"containerPath"`
			} `yaml:"extraMounts"`
		} `yaml:"nodes"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(conf("kind", "--dir", kindDir)), &kind))
	require.Len(t, kind.Patches, 1)
	var cfg struct {
		Plugins map[string]struct {
			Registry struct {
				ConfigPath string         `toml:"config_path"`
				Mirrors    map[string]any `toml:"mirrors"`
			} `toml:"registry"`
		} `toml:"plugins"`
	}
	require.NoError(t, toml.Unmarshal([]byte(kind.Patches[0]), &cfg), kind.Patches[0])
	reg := cfg.Plugins["io.containerd.grpc.v1.cri"].Registry
	assert.Equal(t, "/etc/containerd/certs.d", reg.ConfigPath)
	assert.Empty(t, reg.Mirrors, "not the deprecated registry.mirrors")
	require.Len(t, kind.Nodes, 1)
	require.Len(t, kind.Nodes[0].ExtraMounts, 1)
	assert.Equal(t, kindDir, kind.Nodes[0].ExtraMounts[0].HostPath)
	assert.Equal(t, "/etc/containerd/certs.d", kind.Nodes[0].ExtraMounts[0].ContainerPath)
	for h, ep := range want {
		b, err := os.ReadFile(filepath.Join(kindDir, h, "hosts.toml"))
		require.NoError(t, err)
		assert.Contains(t, string(b), ep)
	}

	qemu := conf("talosctl-qemu")
	assert.True(t, strings.HasPrefix(qemu, "talosctl cluster create qemu --cidr 10.5.0.0/24"), qemu)
	docker := conf("talosctl-docker")
	assert.True(t, strings.HasPrefix(docker, "talosctl cluster create docker \\"), docker)

	// Docker's daemon.json: docker.io only, which the fixture set lacks.
	r := cli(t, "", append([]string{"config", "--format", "docker", "--bridge", "127.0.0.1"}, withPorts...)...)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "docker.io only")
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// unpackTalosCache reads the OCI layout talosctl images cache-create writes:
// one image, one layer, the cache tree inside.
func unpackTalosCache(t *testing.T, dir string) string {
	t.Helper()
	p, err := layout.FromPath(dir)
	require.NoError(t, err)
	idx, err := p.ImageIndex()
	require.NoError(t, err)
	im, err := idx.IndexManifest()
	require.NoError(t, err)
	require.Len(t, im.Manifests, 1)
	require.NotNil(t, im.Manifests[0].Platform)
	assert.Equal(t, "linux/amd64", im.Manifests[0].Platform.OS+"/"+im.Manifests[0].Platform.Architecture)
	img, err := idx.Image(im.Manifests[0].Digest)
	require.NoError(t, err)
	layers, err := img.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 1)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	defer rc.Close()
	root := t.TempDir()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		path := filepath.Join(root, filepath.FromSlash(h.Name))
		require.True(t, strings.HasPrefix(path, root+string(filepath.Separator)), h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			require.NoError(t, os.MkdirAll(path, 0o755))
		case tar.TypeReg:
			require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
			b, err := io.ReadAll(tr)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(path, b, 0o644))
		}
	}
	return root
}

// resolveInTalosCache follows Talos's registry service: the tag file's
// sha256 names a digest file with the same bytes; an index names the
// linux/amd64 manifest, also a digest file; its config and layers are blob
// files whose content hashes to their names.
func resolveInTalosCache(t *testing.T, root string, img fixtures.Image) {
	t.Helper()
	dir := filepath.Join(root, "manifests", img.Registry, filepath.FromSlash(img.Repository))
	byDigest := func(d string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, "digest", strings.Replace(d, "sha256:", "sha256-", 1)))
		require.NoError(t, err, "%s: manifest %s", img.Ref(), d)
		return b
	}
	hashOf := func(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }
	tagged, err := os.ReadFile(filepath.Join(dir, "reference", img.Tag))
	require.NoError(t, err, img.Ref())
	manifest := byDigest(hashOf(tagged))
	require.Equal(t, tagged, manifest, img.Ref())
	var m struct {
		MediaType string          `json:"mediaType"`
		Manifests []v1.Descriptor `json:"manifests"`
		Config    v1.Descriptor   `json:"config"`
		Layers    []v1.Descriptor `json:"layers"`
	}
	require.NoError(t, json.Unmarshal(manifest, &m))
	if len(m.Manifests) > 0 {
		var found bool
		for _, d := range m.Manifests {
			if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" {
				manifest, found = byDigest(d.Digest.String()), true
				require.Equal(t, d.Digest.String(), hashOf(manifest), img.Ref())
			}
		}
		require.True(t, found, "%s: no linux/amd64 manifest in its index", img.Ref())
		m.Config, m.Layers = v1.Descriptor{}, nil
		require.NoError(t, json.Unmarshal(manifest, &m))
	}
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		b, err := os.ReadFile(filepath.Join(root, "blob", strings.Replace(d.Digest.String(), "sha256:", "sha256-", 1)))
		require.NoError(t, err, "%s: blob %s", img.Ref(), d.Digest)
		assert.Equal(t, d.Digest.String(), hashOf(b), img.Ref())
		assert.Equal(t, d.Size, int64(len(b)), img.Ref())
	}
}
