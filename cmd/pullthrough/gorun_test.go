package main

import (
	"bufio"
	"net"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/fixtures"
)

// SIGTERM to `go run` reaches the go tool, not the program it started; the
// program must still stop and free its ports.
func TestGoRunStopsWithItsParent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds with go run")
	}
	up := fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.001), fixtures.Unthrottled())
	args := []string{"run", ".", "up", "--os-ports", "--loopback-only", "--bridge", "127.0.0.1", "--storage", t.TempDir()}
	for h, u := range up.Origins() {
		args = append(args, "--upstream", h+"="+u)
	}
	cmd := exec.Command("go", args...)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	portRE := regexp.MustCompile(` on :(\d+) `)
	var port string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if m := portRE.FindStringSubmatch(sc.Text()); m != nil {
			port = m[1]
			break
		}
	}
	require.NotEmpty(t, port, "up printed no port")
	go func() {
		for sc.Scan() {
		}
	}()
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 20*time.Second, 50*time.Millisecond, "the cache still answers after its go run was stopped")
}
