package cachetest_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/internal/testnet"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
)

// envFetch makes this test binary, run inside a network namespace, print the
// status of one GET and exit: a client on another host, as far as the cache
// can tell.
const envFetch = "PULLTHROUGH_TEST_FETCH"

func init() {
	if url := os.Getenv(envFetch); url != "" {
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("status:", resp.StatusCode)
		os.Exit(0)
	}
}

// netns makes a namespace joined to the host by a veth pair (not a bridge):
// the host side gets .1, the namespace .2 of a /30.
func netns(t *testing.T) (hostIP, nsName, subnet string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipUnlessCI(t, "making a network namespace needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		skipUnlessCI(t, "iproute2's ip is not installed")
	}
	id := os.Getpid() % 60000
	nsName = fmt.Sprintf("pt-ns-%d", id)
	host, peer := fmt.Sprintf("pth%d", id), fmt.Sprintf("ptn%d", id)
	p := testnet.Subnet(t, "10.251").Addr() // a /24 of its own; the veth pair takes its first /30
	hostIP = p.Next().String()
	subnet = p.String() + "/30"
	run := func(args ...string) {
		out, err := exec.Command("ip", args...).CombinedOutput()
		require.NoError(t, err, "ip %s: %s", strings.Join(args, " "), out)
	}
	run("netns", "add", nsName)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsName).Run() })
	run("link", "add", host, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	run("link", "set", peer, "netns", nsName)
	run("addr", "add", hostIP+"/30", "dev", host)
	run("link", "set", host, "up")
	run("netns", "exec", nsName, "ip", "addr", "add", p.Next().Next().String()+"/30", "dev", peer)
	run("netns", "exec", nsName, "ip", "link", "set", peer, "up")
	return hostIP, nsName, subnet
}

func fetchFrom(t *testing.T, nsName, url string) string {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", nsName, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envFetch+"="+url)
	out, _ := cmd.CombinedOutput()
	return strings.TrimSpace(string(out))
}

func TestClientFromAnotherHostIsRefused(t *testing.T) {
	hostIP, nsName, subnet := netns(t)
	up := newTestUpstream(t)
	up.push(t, "app:v1", 14)
	u := up.upstream("registry.test")

	closed := cachetest.New(t, cache.WithUpstreams(u), cache.WithListenAddrs("127.0.0.1", hostIP))
	url := fmt.Sprintf("http://%s:%d/v2/app/manifests/v1", hostIP, closed.Cache("registry.test").Port())
	assert.Equal(t, "status: 403", fetchFrom(t, nsName, url), "a client on a non-bridge network was served")
	assert.Zero(t, up.total.Load())

	open := cachetest.New(t, cache.WithUpstreams(u), cache.WithListenAddrs("127.0.0.1", hostIP),
		cache.WithAllowedClients(subnet))
	url = fmt.Sprintf("http://%s:%d/v2/app/manifests/v1", hostIP, open.Cache("registry.test").Port())
	assert.Equal(t, "status: 200", fetchFrom(t, nsName, url))

}
