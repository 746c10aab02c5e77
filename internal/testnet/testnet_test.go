package testnet

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A listener of another process on the port is not the server's: listens
// tells them apart by the socket's owner.
func TestListensNamesTheProcessThatHoldsThePort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	assert.True(t, Listens(os.Getpid(), port), "this process listens on %d", port)
	assert.False(t, Listens(os.Getppid(), port), "the parent does not")
	assert.False(t, Listens(os.Getpid(), port+1), "nor on another port")
}

// A server whose port is taken exits, and start draws another port.
func TestStartDrawsAgainWhenTheServerCannotBind(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: redis-server is not installed (scripts/fleet-up installs it): %v", err)
		}
		t.Skipf("redis-server is not installed (scripts/fleet-up installs it): %v", err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	calls := 0
	s := StartServer(t, bin, func(port int) []string {
		calls++
		if calls == 1 {
			port = takenPort // as if another process had bound it first
		}
		return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir()}
	}, func(string) bool { return true })
	assert.Equal(t, 2, calls, "started again after the first exited")
	assert.NotEqual(t, "127.0.0.1:"+strconv.Itoa(takenPort), s.Addr)
	_, p, _ := net.SplitHostPort(s.Addr)
	port, _ := strconv.Atoi(p)
	assert.True(t, Listens(s.cmd.Process.Pid, port), "the server answers on %s", s.Addr)
}

// A refusing port refuses connections and binds, and listens once handed
// over.
func TestRefusingPortRefusesUntilItListens(t *testing.T) {
	r := Refuse(t, "127.0.0.1")
	_, err := net.DialTimeout("tcp", r.Addr, time.Second)
	require.ErrorIs(t, err, syscall.ECONNREFUSED, "a connection to the held port")
	_, err = net.Listen("tcp", r.Addr)
	require.ErrorIs(t, err, syscall.EADDRINUSE, "another listener on the held port")

	l, err := r.Listen()
	require.NoError(t, err)
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	require.NoError(t, err, "a connection once it listens")
	c.Close()
	_, err = r.Listen()
	assert.Error(t, err, "handed over twice")
}

// Two holds in one /16 are different /24s, neither routed here.
func TestSubnetsAreHeldApartAndUnrouted(t *testing.T) {
	a, b := Subnet(t, "10.249"), Subnet(t, "10.249")
	assert.NotEqual(t, a, b)
	for _, p := range []netip.Prefix{a, b} {
		assert.Equal(t, 24, p.Bits())
		assert.True(t, netip.MustParsePrefix("10.249.0.0/16").Contains(p.Addr()), "%s is outside 10.249.0.0/16", p)
		assert.False(t, overlapsAny(p, hostRoutes()), "%s is routed on this host", p)
	}
	// The routes read back as the kernel's: every route's own first /24
	// overlaps it, and nothing else does.
	routes := hostRoutes()
	require.NotEmpty(t, routes, "no IPv4 route on this host")
	for _, r := range routes {
		if r.Bits() == 0 || r.Bits() > 24 {
			continue
		}
		assert.True(t, overlapsAny(netip.PrefixFrom(r.Addr(), 24), routes), "%s", r)
		assert.True(t, r.Addr().IsPrivate() || r.Addr().IsGlobalUnicast(), "route %s does not look like an address (byte order?)", r)
	}
	t.Logf("routes: %v", routes)
}
