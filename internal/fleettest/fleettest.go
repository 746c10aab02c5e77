// Package fleettest starts the real servers a fleet test needs, each on a
// port of its own and stopped when the test ends: Redis (Debian's
// redis-server) and an S3 server (versitygw over a directory, built by
// scripts/fleet-up). Tests skip without them, and fail under CI=true, where
// .ci/run installs them.
package fleettest

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Credentials of the S3 server's root user, for tests only.
const (
	AccessKey = "pullthrough-test"
	SecretKey = "pullthrough-test-secret"
	Bucket    = "pullthrough"
)

func need(tb testing.TB, bin, why string) string {
	tb.Helper()
	p, err := exec.LookPath(bin)
	if err != nil {
		if cand := filepath.Join(binDir(), bin); fileExists(cand) {
			return cand
		}
		msg := fmt.Sprintf("%s is not installed (%s; scripts/fleet-up installs it)", bin, why)
		if os.Getenv("CI") == "true" {
			tb.Fatal("CI=true: " + msg)
		}
		tb.Skip(msg)
	}
	return p
}

func binDir() string {
	if d := os.Getenv("PULLTHROUGH_BIN"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "pullthrough", "bin")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// drawPort draws a port below the kernel's ephemeral range, where no port
// the OS picks for others (listeners on :0, outgoing connections) is. It
// does not check the port: the server's own bind does, and start draws
// again when that fails.
func drawPort() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &low)
	}
	return 10000 + rand.Intn(max(low-10000, 1000))
}

// Server is a process the test started.
type Server struct {
	Addr   string // 127.0.0.1:port
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited and been waited for
}

// Stop kills the server and waits for it (idempotent); the test's cleanup
// calls it too.
func (s *Server) Stop() {
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// start runs the server that args(port) describes on a drawn port, and
// returns once that process (not another that holds the port) listens on
// it and ready(addr) says it answers. A server that exits first (its port
// was taken, say) is started again on another port.
func start(tb testing.TB, name string, args func(port int) []string, ready func(addr string) bool) *Server {
	tb.Helper()
	var exits []string
	for range 5 {
		port := drawPort()
		s, out := launch(tb, name, port, args(port))
		if s.await(port, ready) {
			tb.Cleanup(s.Stop)
			return s
		}
		select {
		case <-s.exited:
			exits = append(exits, fmt.Sprintf("on port %d: %s: %s", port, s.cmd.ProcessState, lastLine(out.String())))
		default:
			s.Stop()
			tb.Fatalf("%s did not answer on %s within %s: %s", name, s.Addr, startTimeout, out.String())
		}
	}
	tb.Fatalf("%s exited at start five times: %s", name, strings.Join(exits, "; "))
	return nil
}

const startTimeout = 20 * time.Second

func launch(tb testing.TB, name string, port int, args []string) (*Server, *lockedBuffer) {
	tb.Helper()
	cmd := exec.Command(name, args...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting %s: %v", name, err)
	}
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(s.exited) }()
	return s, out
}

// await polls until the server's own process listens on port and answers
// (true), or it exits or the start timeout passes (false).
func (s *Server) await(port int, ready func(addr string) bool) bool {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return false
		default:
		}
		if listens(s.cmd.Process.Pid, port) && ready(s.Addr) {
			return true
		}
		time.Sleep(20 * time.Millisecond) // polling a new process's sockets
	}
	return false
}

// listens reports whether process pid holds a TCP socket listening on
// 127.0.0.1:port or the wildcard address (Linux's /proc: the socket's inode
// in /proc/net/tcp, and a descriptor of pid's naming it).
func listens(pid, port int) bool {
	inodes := map[string]bool{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(f[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(p) == port {
				inodes[f[9]] = true
			}
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		if inode, ok := strings.CutPrefix(link, "socket:["); ok && inodes[strings.TrimSuffix(inode, "]")] {
			return true
		}
	}
	return false
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Redis starts a redis-server with no persistence.
func Redis(tb testing.TB) *Server {
	tb.Helper()
	bin := need(tb, "redis-server", "Debian package redis-server")
	dir := tb.TempDir()
	return start(tb, bin, func(port int) []string {
		return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir}
	}, func(addr string) bool {
		// Redis's protocol, not only a socket.
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return false
		}
		buf := make([]byte, 7)
		n, _ := io.ReadFull(c, buf)
		return string(buf[:n]) == "+PONG\r\n"
	})
}

// S3 starts versitygw over a temporary directory, with Bucket created.
func S3(tb testing.TB) *Server {
	tb.Helper()
	bin := need(tb, "versitygw", "built from the Go module proxy")
	root := tb.TempDir()
	s := start(tb, bin, func(port int) []string {
		return []string{"--access", AccessKey, "--secret", SecretKey, "--port", "127.0.0.1:" + strconv.Itoa(port), "posix", root}
	}, func(addr string) bool {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	c := Client("http://" + s.Addr)
	if _, err := c.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(Bucket)}); err != nil {
		tb.Fatalf("creating bucket %s: %v", Bucket, err)
	}
	return s
}

// Client is an S3 client for the test server.
func Client(endpoint string) *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(endpoint), Region: "us-east-1", UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}
