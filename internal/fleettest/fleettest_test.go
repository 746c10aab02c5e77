package fleettest

import (
	"net"
	"os"
	"strconv"
	"testing"

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
	assert.True(t, listens(os.Getpid(), port), "this process listens on %d", port)
	assert.False(t, listens(os.Getppid(), port), "the parent does not")
	assert.False(t, listens(os.Getpid(), port+1), "nor on another port")
}

// A server whose port is taken exits, and start draws another port.
func TestStartDrawsAgainWhenTheServerCannotBind(t *testing.T) {
	bin := need(t, "redis-server", "Debian package redis-server")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	calls := 0
	s := start(t, bin, func(port int) []string {
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
	assert.True(t, listens(s.cmd.Process.Pid, port), "the server answers on %s", s.Addr)
}
