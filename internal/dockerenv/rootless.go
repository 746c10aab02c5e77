package dockerenv

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"strings"
	"testing"

	"github.com/moby/moby/client"

	"github.com/pullthrough/pullthrough/cache"
)

// Rootless reports whether the daemon cli talks to runs rootless (its
// security options hold "name=rootless"). Such a daemon's containers reach
// this host at its primary address, not at docker0's.
func Rootless(ctx context.Context, cli *client.Client) (bool, error) {
	info, err := cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return false, fmt.Errorf("asking the Docker daemon at %s whether it is rootless: %w", cli.DaemonHost(), err)
	}
	for _, o := range info.Info.SecurityOptions {
		if strings.Contains(o, "name=rootless") {
			return true, nil
		}
	}
	return false, nil
}

// RootlessUser is the user scripts/rootless-up runs its daemon as.
const RootlessUser = "pullthrough-rootless"

// RootlessHost is the DOCKER_HOST of the rootless daemon the tests use:
// $PULLTHROUGH_ROOTLESS_DOCKER_HOST, else the socket of RootlessUser's
// daemon as scripts/rootless-up starts it.
func RootlessHost() (string, error) {
	if h := os.Getenv("PULLTHROUGH_ROOTLESS_DOCKER_HOST"); h != "" {
		return h, nil
	}
	u, err := user.Lookup(RootlessUser)
	if err != nil {
		return "", fmt.Errorf("no rootless Docker daemon: the user %s does not exist (run scripts/rootless-up, or set PULLTHROUGH_ROOTLESS_DOCKER_HOST)", RootlessUser)
	}
	return "unix:///run/user/" + u.Uid + "/docker.sock", nil
}

// RequireRootless points DOCKER_HOST at the rootless daemon for the rest of
// the test (everything that reads the environment, Talos's provisioner and
// the cleanups among them, then talks to it) and returns a client of it. It
// skips when no rootless daemon answers, and fails instead under CI=true;
// it fails when the daemon answering is not rootless. Like t.Setenv, it
// cannot be used in parallel tests.
func RequireRootless(t *testing.T) (*client.Client, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: needs a rootless Docker daemon, and -short is set")
	}
	host, err := RootlessHost()
	if err == nil {
		var cli *client.Client
		if cli, err = client.New(client.WithHost(host)); err == nil {
			ctx, cancel := context.WithTimeout(t.Context(), pingTimeout)
			_, err = cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
			cancel()
			_ = cli.Close()
		}
		if err != nil {
			err = fmt.Errorf("no rootless Docker daemon answers at %s (run scripts/rootless-up): %w", host, err)
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and a rootless Docker daemon is required: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	t.Setenv("DOCKER_HOST", host)
	cli := Require(t)
	rootless, err := Rootless(t.Context(), cli)
	if err != nil {
		t.Fatal(err)
	}
	if !rootless {
		t.Fatalf("the Docker daemon at %s is not rootless", host)
	}
	return cli, host
}

// HostAddr is where containers of cli's daemon reach this host: this host's
// primary address for a rootless daemon (natted true: every container's
// connections then arrive from that address, through slirp4netns), else
// docker0's. Without docker0 (Docker Desktop's VM, Colima, a remote daemon)
// it fails with cache.ErrNoBridge: this host cannot vouch for an address.
func HostAddr(ctx context.Context, cli *client.Client) (addr string, natted bool, err error) {
	rootless, err := Rootless(ctx, cli)
	if err != nil {
		return "", false, err
	}
	if rootless {
		ip, err := cache.HostIP()
		if err != nil {
			return "", false, fmt.Errorf("the Docker daemon at %s is rootless, so its containers reach this host at its primary address: %w", cli.DaemonHost(), err)
		}
		return ip, true, nil
	}
	ip, err := cache.DockerBridgeIP()
	if err != nil {
		return "", false, fmt.Errorf("the Docker daemon at %s: %w", cli.DaemonHost(), err)
	}
	return ip, false, nil
}
