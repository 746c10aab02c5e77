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

func freePort(tb testing.TB) int {
	tb.Helper()
	// Below the kernel's ephemeral range, where no port the OS picks for
	// others (listeners on :0, outgoing connections) can take it before
	// the child binds it.
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &low)
	}
	for range 50 {
		port := 10000 + rand.Intn(max(low-10000, 1000))
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			l.Close()
			return port
		}
	}
	tb.Fatal("no free port below the ephemeral range")
	return 0
}

// Server is a process the test started.
type Server struct {
	Addr string // 127.0.0.1:port
	cmd  *exec.Cmd
	once sync.Once
}

// Stop kills the server (idempotent); the test's cleanup calls it too.
func (s *Server) Stop() {
	s.once.Do(func() {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	})
}

func start(tb testing.TB, addr string, ready func() bool, name string, args ...string) *Server {
	tb.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting %s: %v", name, err)
	}
	s := &Server{Addr: addr, cmd: cmd}
	tb.Cleanup(s.Stop)
	deadline := time.Now().Add(20 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s did not answer on %s", name, addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// Redis starts a redis-server with no persistence on a free port.
func Redis(tb testing.TB) *Server {
	tb.Helper()
	bin := need(tb, "redis-server", "Debian package redis-server")
	port := freePort(tb)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	return start(tb, addr, func() bool {
		// A Redis answering PING, not any listener that holds the port.
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
	}, bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tb.TempDir())
}

// S3 starts versitygw over a temporary directory, with Bucket created.
func S3(tb testing.TB) *Server {
	tb.Helper()
	bin := need(tb, "versitygw", "built from the Go module proxy")
	port := freePort(tb)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	root := tb.TempDir()
	s := start(tb, addr, func() bool {
		resp, err := http.Get("http://" + addr + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, bin, "--access", AccessKey, "--secret", SecretKey, "--port", addr, "posix", root)
	c := Client("http://" + addr)
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
