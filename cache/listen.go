package cache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pullthrough/pullthrough/internal/engine"
)

// ErrPortInUse means a fixed port is held by something other than a
// pullthrough cache for the same upstream.
var ErrPortInUse = errors.New("port in use")

// ErrAddrNotLocal means a listen address is not on this host.
var ErrAddrNotLocal = errors.New("address not on this host")

// reuseError tells the caller a fixed port already serves this upstream,
// from the storage directory given.
type reuseError struct{ hostPort, storage string }

func (r *reuseError) Error() string { return "port " + r.hostPort + " already serves this upstream" }

// listen opens one listener per address, all on the same port. With an
// OS-chosen port, the first address picks it and a clash on a later address
// starts over with a new one.
func listen(ctx context.Context, u Upstream, addrs []string, fixed bool, want string) ([]net.Listener, error) {
	port := 0
	if fixed {
		if u.Port < 1 || u.Port > 65535 {
			return nil, fmt.Errorf("upstream %s: port %d: want 1 to 65535", u.Host, u.Port)
		}
		port = u.Port
	}
	for attempt := 0; ; attempt++ {
		lns, err := listenAll(addrs, port)
		if err == nil {
			return lns, nil
		}
		var clash *clashError
		if !errors.As(err, &clash) {
			return nil, fmt.Errorf("upstream %s: %w", u.Host, err)
		}
		if !fixed && clash.addr != addrs[0] && attempt < 10 {
			continue
		}
		if fixed {
			owner, identity, storage := probeOwner(ctx, clash.hostPort)
			switch {
			case owner == u.Host && identity == want:
				return nil, &reuseError{hostPort: clash.hostPort, storage: storage}
			case owner == u.Host:
				return nil, fmt.Errorf("upstream %s: port %d on %s: %w by a pullthrough cache for %s %s", u.Host, port, clash.addr, ErrPortInUse, owner, identityDiff(identity, want))
			case owner != "":
				return nil, fmt.Errorf("upstream %s: port %d on %s: %w by a pullthrough cache for %s", u.Host, port, clash.addr, ErrPortInUse, owner)
			}
			return nil, fmt.Errorf("upstream %s: port %d on %s: %w by another program (not a pullthrough cache)", u.Host, port, clash.addr, ErrPortInUse)
		}
		return nil, fmt.Errorf("upstream %s: %w", u.Host, err)
	}
}

type clashError struct {
	addr, hostPort string
	err            error
}

func (c *clashError) Error() string { return fmt.Sprintf("listening on %s: %v", c.hostPort, c.err) }
func (c *clashError) Unwrap() error { return c.err }

func listenAll(addrs []string, port int) ([]net.Listener, error) {
	var lns []net.Listener
	fail := func(err error) ([]net.Listener, error) {
		for _, l := range lns {
			l.Close()
		}
		return nil, err
	}
	for _, a := range addrs {
		hp := net.JoinHostPort(a, strconv.Itoa(port))
		l, err := net.Listen("tcp", hp)
		switch {
		case errors.Is(err, syscall.EADDRINUSE):
			return fail(&clashError{addr: a, hostPort: hp, err: err})
		case errors.Is(err, syscall.EADDRNOTAVAIL):
			return fail(fmt.Errorf("listening on %s: %w (want an address of one of this host's interfaces)", hp, ErrAddrNotLocal))
		case err != nil:
			return fail(fmt.Errorf("listening on %s: %w", hp, err))
		}
		lns = append(lns, l)
		if port == 0 {
			port = l.Addr().(*net.TCPAddr).Port
		}
	}
	return lns, nil
}

// probeOwner asks whatever holds a port whether it is a pullthrough cache,
// and for which upstream, remote and mode.
func probeOwner(ctx context.Context, hostPort string) (host, identity, storage string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hostPort+"/v2/", nil)
	if err != nil {
		return "", "", ""
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", ""
	}
	resp.Body.Close()
	return resp.Header.Get(engine.HeaderUpstream), resp.Header.Get(engine.HeaderIdentity), resp.Header.Get(engine.HeaderStorage)
}

// waitReady polls GET /v2/ until it answers 200.
func waitReady(ctx context.Context, hostPort string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	delay := 5 * time.Millisecond
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hostPort+"/v2/", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /v2/ answered %s", resp.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to answer: %w (last: %v)", hostPort, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 200*time.Millisecond)
	}
}

// identityDiff says in words how another cache for the same registry
// differs from the one wanted: its upstream URL, its mode, or both.
func identityDiff(have, want string) string {
	hr, hm, _ := strings.Cut(have, "/")
	wr, wm, _ := strings.Cut(want, "/")
	switch {
	case hr != wr && hm != wm:
		return fmt.Sprintf("that fetches from another upstream URL and runs in %s mode (this one: %s)", hm, wm)
	case hr != wr:
		return "that fetches from another upstream URL"
	default:
		return fmt.Sprintf("that runs in %s mode (this one: %s)", hm, wm)
	}
}
