package provisioners_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/internal/testnet"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/provisioners"
)

// standinQemuSpec is a qemu cluster of stand-in VMs on a network of this
// package's own, or a skip (a failure under CI=true) naming what is missing.
func standinQemuSpec(t *testing.T, suffix string) provisioners.Spec {
	t.Helper()
	q, err := provisioners.StandinQemu()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v (CI=true: missing prerequisites fail instead of skipping)", err)
		}
		t.Skip(err)
	}
	return provisioners.Spec{
		Name:        fmt.Sprintf("pt-q-%d-%s", os.Getpid()%100000, suffix),
		Provisioner: provisioners.Qemu, ControlPlanes: 1, Workers: 1,
		CIDR:     testnet.Subnet(t, "10.78").String(),
		StateDir: shortTempDir(t),
		Qemu:     q,
	}
}

func TestQemuClusterOfStandinVMsPullsThroughTheCaches(t *testing.T) {
	spec := standinQemuSpec(t, "pull")
	ups := fixtures.NewTalosUpstreams(t, provisioners.DefaultTalosVersion, fixtures.WithScale(0.002), fixtures.Unthrottled())
	cu := cacheUpstreams(ups)
	// The bridge appears only when the cluster is created: caches listen
	// on all addresses so that they answer on its gateway.
	caches := cachetest.New(t, cache.WithUpstreams(cu...), cache.WithListenAll())
	netnsBefore := listDir(t, "/run/netns")

	var log logBuffer
	start := time.Now()
	ready := fixtures.StandinReady()
	c := provisioners.New(t, spec, provisioners.WithCaches(caches), provisioners.WithLogger(log.logger()), provisioners.WithReadiness(ready))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	state := filepath.Join(spec.StateDir, spec.Name)
	require.NoError(t, c.Wait(ctx), "provisioner log:\n%s\nconsoles:\n%s", log.String(), consoles(state))
	t.Logf("two stand-in VMs booted and pulled in %s (%s)", time.Since(start).Round(time.Millisecond), c.Timings())

	gateway, err := cache.GatewayIP(spec.CIDR)
	require.NoError(t, err)
	want := map[string][]string{}
	for _, cache := range caches.Caches() {
		want[cache.Host()] = []string{fmt.Sprintf("http://%s:%d", gateway, cache.Port())}
	}

	// Every VM pulled the whole set through the caches, at the gateway.
	sums := ready.Summaries()
	require.Len(t, sums, 2)
	var nodeBytes, nodeRequests int64
	for node, s := range sums {
		assert.Equal(t, s.Wanted, s.Images, node)
		assert.Equal(t, ups.PullSize(), s.Bytes, node)
		for host, r := range s.Registries {
			assert.Equal(t, want[host], r.Mirrors, "%s: mirrors of %s in the config the VM fetched", node, host)
		}
		nodeBytes += s.Bytes
		nodeRequests += s.Requests
	}
	total := caches.Total()
	assert.Equal(t, nodeBytes, total.ServedBytes, "what VMs received is what the caches served")
	assert.Equal(t, nodeRequests, total.Requests)
	up := ups.Total()
	assert.Equal(t, ups.UniquePullSize(), up.ContentBytes, "two VMs booting at once on cold caches: each blob once, shared layers once")
	assert.Equal(t, up.BytesSent, total.UpstreamBytes, "cache and upstream counters agree")
	assert.Equal(t, up.Requests(), total.UpstreamRequests, "cache and upstream counters agree")

	// The config each launcher was given (and served to its VM) names
	// every cache at the CIDR's gateway.
	for _, n := range c.Nodes() {
		assert.Equal(t, want, launchConfigMirrors(t, filepath.Join(state, n.Name+".config")), n.Name)
	}

	// Destroy leaves no process, bridge, namespace (with its tap) or state.
	bridge := bridgeName(c.Plan().Configs.ClusterRequest.Network.Name)
	_, err = net.InterfaceByName(bridge)
	require.NoError(t, err, "bridge %s while the cluster runs", bridge)
	require.NoError(t, c.Destroy(ctx))
	_, err = net.InterfaceByName(bridge)
	assert.Error(t, err, "bridge %s left", bridge)
	assert.Empty(t, processesMentioning(t, state), "processes left")
	// Another test binary's VMs (another package, or another checkout's
	// suite running beside this one) hold namespaces of their own while
	// they run, and their names say nothing of whose they are (nor can
	// their inodes be compared from this mount namespace): a leaked one
	// stays, theirs go when their cluster does, so wait for the set to
	// shrink back, long enough for a cluster beside this one to finish.
	assert.Eventually(t, func() bool {
		for _, n := range listDir(t, "/run/netns") {
			if !slices.Contains(netnsBefore, n) {
				return false
			}
		}
		return true
	}, 90*time.Second, 50*time.Millisecond, "network namespaces (and the taps in them) left: before %v, now %v", netnsBefore, listDir(t, "/run/netns"))
	_, err = os.Stat(state)
	assert.True(t, os.IsNotExist(err), "state directory left")
}

// bridgeName is Talos's vm.CreateNetwork rule: "talos" and the first 8 hex
// digits of the network name's SHA-256.
func bridgeName(network string) string {
	h := sha256.Sum256([]byte(network))
	return "talos" + hex.EncodeToString(h[:])[:8]
}

func launchConfigMirrors(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var lc struct{ Config string }
	require.NoError(t, json.Unmarshal(b, &lc))
	cfg, err := configloader.NewFromBytes([]byte(lc.Config))
	require.NoError(t, err)
	out := map[string][]string{}
	for host, m := range cfg.RegistryMirrorConfigs() {
		for _, ep := range m.Endpoints() {
			out[host] = append(out[host], ep.Endpoint())
		}
		sort.Strings(out[host])
	}
	return out
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return []string{}
	}
	require.NoError(t, err)
	names := []string{}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// processesMentioning lists processes whose command line names path: the
// launchers, dhcpd, dnsd, load balancer and QEMU all carry the state path.
func processesMentioning(t *testing.T, path string) []string {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	var out []string
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, path) {
			out = append(out, filepath.Base(filepath.Dir(p))+": "+cmd)
		}
	}
	return out
}

// consoles is the end of every VM's console log, for a failure message.
func consoles(state string) string {
	logs, _ := filepath.Glob(filepath.Join(state, "*.log"))
	var b strings.Builder
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		s := string(data)
		if len(s) > 4000 {
			s = "…" + s[len(s)-4000:]
		}
		fmt.Fprintf(&b, "== %s\n%s\n", filepath.Base(l), s)
	}
	return b.String()
}

// shortTempDir is a state directory short enough for QEMU's unix sockets.
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "ptq-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Every talosctl helper the provisioner may start gets an answer from the
// test binary, never a second run of the test suite.
func TestTestBinaryAnswersEveryTalosctlHelper(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"kms-launch"}, "talosctl helper command not served by this binary"},
		{[]string{"dhcpd-launch", "--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		{[]string{"dnsd-launch", "--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		{[]string{"loadbalancer-launch", "--loadbalancer-ports", "api"}, `load balancer port "api"`},
	} {
		out, err := exec.Command(os.Args[0], tc.args...).CombinedOutput()
		require.Error(t, err, "%v: %s", tc.args, out)
		assert.Contains(t, string(out), tc.want, tc.args)
		assert.NotContains(t, string(out), "PASS", "%v: the tests ran instead of the helper", tc.args)
	}
}
