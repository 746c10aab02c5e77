package provisioners

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// probeExit is what the probe guest writes to QEMU's isa-debug-exit port;
// QEMU then exits with (probeExit<<1)|1, a status no failure of QEMU's own
// produces.
const probeExit = 0x10

// ProbeKVM boots a guest of a few bytes with the accelerator, machine and
// CPU model Talos's launcher uses (-accel kvm -machine q35,smm=on -cpu max)
// and reports whether it ran.
// Opening /dev/kvm is not enough: in some sandboxes it opens, but QEMU
// cannot set the CPU's MSRs, or the guest never runs. The error wraps
// ErrKVMUnavailable and carries QEMU's own words.
func ProbeKVM(ctx context.Context) error {
	if runtime.GOARCH != "amd64" {
		return fmt.Errorf("%w: the KVM probe guest is x86 code; on %s, KVM is assumed to work where /dev/kvm opens", ErrKVMUnavailable, runtime.GOARCH)
	}
	if err := kvmOpens(); err != nil {
		return fmt.Errorf("%w: %v", ErrKVMUnavailable, err)
	}
	return runProbe(ctx, "kvm")
}

// runProbe boots the probe guest under accel and checks it reached its end.
func runProbe(ctx context.Context, accel string) error {
	bin, err := exec.LookPath("qemu-system-" + qemuArch())
	if err != nil {
		return fmt.Errorf("%w: %v", ErrQemuPrerequisite, err)
	}
	dir, err := os.MkdirTemp("", "pullthrough-kvm-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	stub := filepath.Join(dir, "probe.bin")
	if err := os.WriteFile(stub, probeGuest(), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The machine as Talos's launcher asks for it (q35 with SMM): a KVM
	// that runs guests but not System Management Mode fails Talos's VMs.
	cmd := exec.CommandContext(ctx, bin, "-accel", accel, "-machine", "q35,smm=on", "-cpu", "max", "-m", "16",
		"-nographic", "-nodefaults", "-no-reboot", "-display", "none",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", stub)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == probeExit<<1|1 {
		return nil
	}
	why := strings.TrimSpace(out.String())
	if ctx.Err() != nil {
		why = "the guest did not finish within 10s"
	} else if why == "" && err != nil {
		why = err.Error()
	}
	return fmt.Errorf("%w: a probe guest under -accel %s -cpu max did not run: %s", ErrKVMUnavailable, accel, why)
}

// probeGuest is a multiboot image (the a.out kludge: a flat binary with load
// addresses in its header) whose code writes probeExit to port 0xf4 and
// halts.
func probeGuest() []byte {
	const (
		magic = 0x1BADB002
		flags = 1 << 16 // the address fields below are valid
		load  = 0x100000
	)
	code := []byte{
		0xB0, probeExit, // mov al, probeExit
		0xE6, 0xF4, // out 0xf4, al
		0xF4,       // hlt
		0xEB, 0xFD, // jmp back to hlt
	}
	sum := uint32(magic + flags)
	hdr := []uint32{magic, flags, -sum, load, load, 0, 0, load + 32}
	b := make([]byte, 512)
	for i, v := range hdr {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	copy(b[32:], code)
	return b
}

func kvmOpens() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// avoidBrokenKVM runs in the VM launcher before Talos's qemu.Launch, which
// passes accel=kvm whenever /dev/kvm opens. Where /dev/kvm opens but KVM
// does not run the probe guest, it re-executes the launcher in a private
// mount namespace in which /dev/kvm is remounted nodev: opening it fails
// there, so Talos's launcher falls back to TCG by its own rule, for this
// process and the QEMU it starts, and for nothing else on the machine. The
// re-exec keeps the PID, stdin (the launch config) and the log, so the
// provisioner's PID file and Destroy are unaffected.
func avoidBrokenKVM(log io.Writer) error {
	if err := kvmOpens(); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(log, "pullthrough: /dev/kvm does not open here (%v): qemu runs under software emulation (TCG)\n", err)
		}
		return nil
	}
	if runtime.GOARCH != "amd64" {
		return nil
	}
	err := ProbeKVM(context.Background())
	if err == nil {
		fmt.Fprintln(log, "pullthrough: KVM runs guests here: qemu uses it")
		return nil
	}
	fmt.Fprintf(log, "pullthrough: %v\npullthrough: hiding /dev/kvm from this launcher, so qemu runs under software emulation (TCG)\n", err)
	return execWithoutKVM()
}

func execWithoutKVM() error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this executable to re-run it without KVM: %w", err)
	}
	// A mount namespace belongs to a thread until execve, which keeps only
	// the calling thread: lock it, change its namespace, exec from it.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("making a private mount namespace to hide /dev/kvm: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private to hide /dev/kvm: %w", err)
	}
	if err := unix.Mount("/dev/kvm", "/dev/kvm", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting /dev/kvm: %w", err)
	}
	if err := unix.Mount("", "/dev/kvm", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remounting /dev/kvm nodev: %w", err)
	}
	if err := kvmOpens(); err == nil {
		return errors.New("/dev/kvm still opens after remounting it nodev")
	}
	return syscall.Exec(self, os.Args, os.Environ())
}
