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
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/pullthrough/pullthrough/internal/testnet"
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

// Redis starts a redis-server with no persistence.
func Redis(tb testing.TB) *testnet.Server {
	tb.Helper()
	bin := need(tb, "redis-server", "Debian package redis-server")
	dir := tb.TempDir()
	return testnet.StartServer(tb, bin, func(port int) []string {
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
func S3(tb testing.TB) *testnet.Server {
	tb.Helper()
	bin := need(tb, "versitygw", "built from the Go module proxy")
	root := tb.TempDir()
	s := testnet.StartServer(tb, bin, func(port int) []string {
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
