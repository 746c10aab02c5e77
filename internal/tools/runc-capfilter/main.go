// Command runc-capfilter is an OCI runtime wrapper around runc for sandboxes
// whose capability bounding set is shorter than the kernel's full set.
//
// Docker gives a --privileged container every capability the kernel knows.
// Where the daemon itself runs without some of them (a sandbox whose CapBnd
// lacks CAP_SYS_RESOURCE, say), runc cannot grant them and the container
// fails with "unable to apply caps: operation not permitted". Talos's docker
// provisioner starts every node --privileged, so the tests could not run.
//
// Registered as dockerd's default runtime (scripts/docker-up does that only
// where the bounding set is short), this wrapper drops from the container's
// capability sets every capability the wrapper's own bounding set lacks, and
// then execs runc with the very same arguments. A capability that is not in
// the bounding set could never have been held anyway, so nothing a container
// could do before is lost. On a normal machine it is not installed at all.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	runc, err := findRunc()
	if err != nil {
		fail(err)
	}
	if err := filterForCommand(os.Args[1:]); err != nil {
		fail(err)
	}
	// argv[0] stays what the caller gave, as if runc had been called.
	argv := append([]string{"runc"}, os.Args[1:]...)
	if err := syscall.Exec(runc, argv, os.Environ()); err != nil {
		fail(fmt.Errorf("executing %s: %w", runc, err))
	}
}

// fail writes to stderr because containerd's shim puts a runtime's stderr
// into the error it reports to dockerd, and from there to the user.
func fail(err error) {
	fmt.Fprintf(os.Stderr, "runc-capfilter: %v\n", err)
	os.Exit(1)
}

// findRunc looks in PATH first so an administrator's runc wins, then in the
// places Debian and upstream packages install it; it never returns this
// executable, which would loop forever.
func findRunc() (string, error) {
	self, _ := os.Executable()
	candidates := []string{}
	if p, err := exec.LookPath("runc"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/runc", "/usr/sbin/runc", "/usr/local/bin/runc", "/usr/local/sbin/runc")
	for _, c := range candidates {
		abs, err := filepath.Abs(c)
		if err != nil {
			continue
		}
		if self != "" && sameFile(abs, self) {
			continue
		}
		if st, err := os.Stat(abs); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return abs, nil
		}
	}
	return "", errors.New("finding runc: not in PATH, /usr/bin, /usr/sbin or /usr/local")
}

func sameFile(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false
	}
	return os.SameFile(sa, sb)
}

// filterForCommand rewrites the spec runc is about to read, if the command is
// one that applies capabilities from a file.
func filterForCommand(args []string) error {
	cmd, rest := splitCommand(args)
	switch cmd {
	case "create", "run":
		bundle := flagValue(rest, "bundle", "b")
		if bundle == "" {
			bundle = "."
		}
		return filterFile(filepath.Join(bundle, "config.json"), true)
	case "exec":
		// docker exec --privileged hands runc a process.json that carries the
		// same full capability list, and fails the same way.
		if p := flagValue(rest, "process", "p"); p != "" {
			return filterFile(p, false)
		}
	}
	return nil
}

// globalValueFlags are runc's global flags that take a value; they must be
// skipped with their value to find the subcommand.
var globalValueFlags = map[string]bool{
	"root": true, "log": true, "log-format": true, "criu": true, "rootless": true,
}

// splitCommand returns runc's subcommand and the arguments after it.
func splitCommand(args []string) (string, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return a, args[i+1:]
		}
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if globalValueFlags[name] {
			i++
		}
	}
	return "", nil
}

// flagValue finds --long VALUE, --long=VALUE, -short VALUE or -short=VALUE
// (runc's flag parser accepts one or two dashes for either name).
func flagValue(args []string, long, short string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != long && name != short {
			continue
		}
		if hasValue {
			return value
		}
		if i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// filterFile rewrites path in place when a capability has to go. isSpec says
// whether the file is a whole runtime spec (capabilities under "process") or
// a bare process object (exec's --process file).
func filterFile(path string, isSpec bool) error {
	bounding, err := boundingSet()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	var out []byte
	var changed bool
	if isSpec {
		out, changed, err = filterSpec(data, bounding)
	} else {
		out, changed, err = filterProcess(data, bounding)
	}
	if err != nil {
		return fmt.Errorf("filtering capabilities in %s: %w", path, err)
	}
	if !changed {
		return nil
	}
	return writeFileAtomic(path, out)
}

func writeFileAtomic(path string, data []byte) error {
	mode := os.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".capfilter-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename succeeds
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// boundingSet reads this process's CapBnd, which dockerd, containerd and the
// shim all share with us.
func boundingSet() (uint64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("reading capability bounding set: %w", err)
	}
	return parseCapBnd(string(data))
}

func parseCapBnd(status string) (uint64, error) {
	for line := range strings.SplitSeq(status, "\n") {
		v, ok := strings.CutPrefix(line, "CapBnd:")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing CapBnd %q: %w", strings.TrimSpace(v), err)
		}
		return n, nil
	}
	return 0, errors.New("parsing capability bounding set: no CapBnd line in /proc/self/status")
}

// filterSpec drops unheld capabilities from a runtime spec's
// process.capabilities and reports whether it changed anything. Everything
// else in the document is carried through as raw JSON.
func filterSpec(data []byte, bounding uint64) ([]byte, bool, error) {
	var spec map[string]json.RawMessage
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, false, fmt.Errorf("parsing spec: %w", err)
	}
	proc, ok := spec["process"]
	if !ok || isNull(proc) {
		return data, false, nil
	}
	newProc, changed, err := filterProcess(proc, bounding)
	if err != nil || !changed {
		return data, false, err
	}
	spec["process"] = newProc
	out, err := marshal(spec)
	return out, err == nil, err
}

// filterProcess does the work on an OCI process object.
func filterProcess(data []byte, bounding uint64) ([]byte, bool, error) {
	var proc map[string]json.RawMessage
	if err := json.Unmarshal(data, &proc); err != nil {
		return nil, false, fmt.Errorf("parsing process: %w", err)
	}
	capsRaw, ok := proc["capabilities"]
	if !ok || isNull(capsRaw) {
		return data, false, nil
	}
	var caps map[string]json.RawMessage
	if err := json.Unmarshal(capsRaw, &caps); err != nil {
		return nil, false, fmt.Errorf("parsing process.capabilities: %w", err)
	}
	changed := false
	for set, raw := range caps {
		if isNull(raw) {
			continue
		}
		var names []string
		if err := json.Unmarshal(raw, &names); err != nil {
			return nil, false, fmt.Errorf("parsing process.capabilities.%s: %w", set, err)
		}
		kept := filterNames(names, bounding)
		if len(kept) == len(names) {
			continue
		}
		b, err := json.Marshal(kept)
		if err != nil {
			return nil, false, err
		}
		caps[set] = b
		changed = true
	}
	if !changed {
		return data, false, nil
	}
	b, err := marshal(caps)
	if err != nil {
		return nil, false, err
	}
	proc["capabilities"] = b
	out, err := marshal(proc)
	return out, err == nil, err
}

// filterNames keeps the capabilities present in bounding. A name it does not
// know is kept: runc judges it, and dropping it silently would hide a typo.
func filterNames(names []string, bounding uint64) []string {
	kept := make([]string, 0, len(names))
	for _, n := range names {
		bit, known := capBits[strings.ToUpper(n)]
		if known && bounding&(1<<bit) == 0 {
			continue
		}
		kept = append(kept, n)
	}
	return kept
}

func isNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// marshal keeps <, > and & as they are, so unchanged strings stay byte-equal.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// capBits maps capability names to their bit numbers (linux/capability.h).
var capBits = map[string]uint{
	"CAP_CHOWN":              0,
	"CAP_DAC_OVERRIDE":       1,
	"CAP_DAC_READ_SEARCH":    2,
	"CAP_FOWNER":             3,
	"CAP_FSETID":             4,
	"CAP_KILL":               5,
	"CAP_SETGID":             6,
	"CAP_SETUID":             7,
	"CAP_SETPCAP":            8,
	"CAP_LINUX_IMMUTABLE":    9,
	"CAP_NET_BIND_SERVICE":   10,
	"CAP_NET_BROADCAST":      11,
	"CAP_NET_ADMIN":          12,
	"CAP_NET_RAW":            13,
	"CAP_IPC_LOCK":           14,
	"CAP_IPC_OWNER":          15,
	"CAP_SYS_MODULE":         16,
	"CAP_SYS_RAWIO":          17,
	"CAP_SYS_CHROOT":         18,
	"CAP_SYS_PTRACE":         19,
	"CAP_SYS_PACCT":          20,
	"CAP_SYS_ADMIN":          21,
	"CAP_SYS_BOOT":           22,
	"CAP_SYS_NICE":           23,
	"CAP_SYS_RESOURCE":       24,
	"CAP_SYS_TIME":           25,
	"CAP_SYS_TTY_CONFIG":     26,
	"CAP_MKNOD":              27,
	"CAP_LEASE":              28,
	"CAP_AUDIT_WRITE":        29,
	"CAP_AUDIT_CONTROL":      30,
	"CAP_SETFCAP":            31,
	"CAP_MAC_OVERRIDE":       32,
	"CAP_MAC_ADMIN":          33,
	"CAP_SYSLOG":             34,
	"CAP_WAKE_ALARM":         35,
	"CAP_BLOCK_SUSPEND":      36,
	"CAP_AUDIT_READ":         37,
	"CAP_PERFMON":            38,
	"CAP_BPF":                39,
	"CAP_CHECKPOINT_RESTORE": 40,
}
