package dockerenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// ErrUnavailable reports that no Docker daemon answers. Errors from Client
// wrap it together with the cause, so callers test with errors.Is.
var ErrUnavailable = errors.New("docker daemon unavailable")

// pingTimeout bounds how long a missing daemon can stall a test: a socket
// that exists but whose daemon hangs would otherwise block until ctx ends.
const pingTimeout = 15 * time.Second

// Client returns a client configured from the environment (DOCKER_HOST,
// DOCKER_API_VERSION, DOCKER_CERT_PATH, ...) that has pinged the daemon and
// negotiated the API version. It detects the daemon by pinging it, never by
// finding a CLI, which says nothing about a daemon. The caller closes the
// client.
func Client(ctx context.Context) (*client.Client, error) {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return nil, fmt.Errorf("%w: creating client: %w", ErrUnavailable, err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if _, err := cli.Ping(pingCtx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("%w: pinging %s: %w", ErrUnavailable, cli.DaemonHost(), err)
	}
	return cli, nil
}

// Require returns a pinged client for a test that needs Docker, closed when
// the test ends. It skips the test under -short or when no daemon answers;
// with CI=true it fails the test instead of skipping, because CI starts
// Docker itself and a skip there would hide a broken setup.
func Require(tb testing.TB) *client.Client {
	tb.Helper()
	if testing.Short() {
		tb.Skip("skipping: needs Docker, and -short is set")
	}
	cli, err := Client(tb.Context())
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("CI=true and Docker is required (run scripts/docker-up): %v", err)
		}
		tb.Skipf("skipping: %v (run scripts/docker-up to start one)", err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	return cli
}
