// Package testnet is what tests need of the network beyond a listener on
// :0: fixed ports drawn where the OS hands none out, servers of other
// programs started on one (drawn again when the bind fails, with readiness
// checked against the very process started), a port that refuses
// connections while the test holds it, and a /24 for a network the test
// makes. Tests only.
package testnet

import (
	"fmt"
	"math/bits"
	"math/rand"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DrawBase draws the first of n consecutive ports below the kernel's
// ephemeral range, where no port the OS picks for others (listeners on :0,
// outgoing connections) is. It does not check them: the bind of whatever
// takes them does, and the caller draws again when that fails (as
// StartServer does).
func DrawBase(n int) int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &low)
	}
	return 10000 + rand.Intn(max(low-10000-n, 1000))
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

// StartServer runs the server that args(port) describes on a drawn port, and
// returns once that process (not another that holds the port) listens on
// it and ready(addr) says it answers. A server that exits first (its port
// was taken, say) is started again on another port.
func StartServer(tb testing.TB, name string, args func(port int) []string, ready func(addr string) bool) *Server {
	tb.Helper()
	var exits []string
	for range 5 {
		port := DrawBase(1)
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

// launch starts the server. Its output is read only once it has exited
// (exited is closed after Wait, which has copied all of it), so a plain
// buffer does.
func launch(tb testing.TB, name string, port int, args []string) (*Server, *strings.Builder) {
	tb.Helper()
	cmd := exec.Command(name, args...)
	out := &strings.Builder{}
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
		if Listens(s.cmd.Process.Pid, port) && ready(s.Addr) {
			return true
		}
		time.Sleep(20 * time.Millisecond) // polling a new process's sockets
	}
	return false
}

// Listens reports whether process pid holds a TCP socket listening on
// 127.0.0.1:port or the wildcard address (Linux's /proc: the socket's inode
// in /proc/net/tcp, and a descriptor of pid's naming it).
func Listens(pid, port int) bool {
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

// Refusing is a TCP port that refuses connections (nothing listens on it)
// while the test holds it: a socket bound without SO_REUSEADDR and not
// listening, so no other bind, listener on :0 or outgoing connection takes
// the port. Listen turns it into a listener later, for an upstream that is
// down first and back after, with no moment where another program can take
// the port.
type Refusing struct {
	Addr string // ip:port
	fd   int
	once sync.Once
}

// Refuse holds a refusing port on ip (an IPv4 address of this host) until
// the test ends.
func Refuse(tb testing.TB, ip string) *Refusing {
	tb.Helper()
	ip4 := net.ParseIP(ip).To4()
	if ip4 == nil {
		tb.Fatalf("testnet.Refuse(%q): want an IPv4 address", ip)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("socket: %v", err)
	}
	sa := &syscall.SockaddrInet4{}
	copy(sa.Addr[:], ip4)
	if err := syscall.Bind(fd, sa); err != nil {
		syscall.Close(fd)
		tb.Fatalf("binding %s:0: %v", ip, err)
	}
	got, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		tb.Fatalf("getsockname: %v", err)
	}
	r := &Refusing{Addr: net.JoinHostPort(ip, strconv.Itoa(got.(*syscall.SockaddrInet4).Port)), fd: fd}
	tb.Cleanup(func() { r.once.Do(func() { syscall.Close(fd) }) })
	return r
}

// Port is the refusing port.
func (r *Refusing) Port() int {
	_, p, _ := net.SplitHostPort(r.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

// Listen makes the held port listen, and hands it over: from now on the
// listener is the caller's to close.
func (r *Refusing) Listen() (net.Listener, error) {
	var l net.Listener
	err := fmt.Errorf("testnet: %s was already handed over", r.Addr)
	r.once.Do(func() {
		if err = syscall.Listen(r.fd, 128); err != nil {
			syscall.Close(r.fd)
			return
		}
		f := os.NewFile(uintptr(r.fd), r.Addr)
		l, err = net.FileListener(f)
		f.Close() // FileListener holds a duplicate
	})
	return l, err
}

// Subnet reserves a /24 of the /16 that sixteen names (such as "10.79")
// for a network the test makes (a Docker network, a cluster's bridge, a
// veth pair): one that no route of this host overlaps, and that no other
// test process on this machine holds. A flock on a file under
// os.TempDir()/pullthrough-subnets is the hold, dropped when the test ends,
// or when the process dies; packages running at once, and two clones' test
// binaries, get different subnets.
func Subnet(tb testing.TB, sixteen string) netip.Prefix {
	tb.Helper()
	base, err := netip.ParsePrefix(sixteen + ".0.0/16")
	if err != nil || !base.Addr().Is4() {
		tb.Fatalf("testnet.Subnet(%q): want the first two octets of an IPv4 /16, such as 10.79", sixteen)
	}
	dir := filepath.Join(os.TempDir(), "pullthrough-subnets")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		tb.Fatalf("testnet.Subnet: %v", err)
	}
	_ = os.Chmod(dir, 0o1777) // any user's tests
	routes := hostRoutes()
	b := base.Addr().As4()
	start := rand.Intn(256)
	for i := range 256 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{b[0], b[1], byte((start + i) % 256), 0}), 24)
		if overlapsAny(p, routes) {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, p.Addr().String()), os.O_RDWR|os.O_CREATE, 0o666)
		if err != nil {
			tb.Fatalf("testnet.Subnet: %v", err)
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close()
			continue
		}
		tb.Cleanup(func() { f.Close() })
		return p
	}
	tb.Fatalf("testnet.Subnet: every /24 of %s is routed on this host or held by another test", base)
	return netip.Prefix{}
}

func overlapsAny(p netip.Prefix, routes []netip.Prefix) bool {
	for _, r := range routes {
		if r.Bits() > 0 && r.Overlaps(p) {
			return true
		}
	}
	return false
}

// hostRoutes are the IPv4 routes of this host's network namespace
// (/proc/net/route: every bridge a Docker network or cluster made has one).
func hostRoutes() []netip.Prefix {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		dst, err1 := strconv.ParseUint(f[1], 16, 32)
		mask, err2 := strconv.ParseUint(f[7], 16, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		// Little-endian words: the first octet is the lowest byte.
		addr := netip.AddrFrom4([4]byte{byte(dst), byte(dst >> 8), byte(dst >> 16), byte(dst >> 24)})
		ones := bits.OnesCount32(uint32(mask))
		out = append(out, netip.PrefixFrom(addr, ones).Masked())
	}
	return out
}
