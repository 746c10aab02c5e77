// Command pullthrough runs the pull-through caches of Talos's guide for
// people at a terminal: one process instead of one `docker run registry:2`
// per upstream, the talosctl lines to paste, and the configs for kind, k3s,
// containerd and Docker.
//
//	pullthrough up                      # the guide's caches on 5000–5006, until Ctrl-C
//	pullthrough config --format talos-patch --skip-fallback
//	pullthrough prefetch --talos v1.13.0
//	pullthrough verify --talos v1.13.0  # every image fully cached?
//	pullthrough status
//
// Exit codes: 0 success, 1 failure, 2 usage error (unknown command or flag,
// stray argument, bad value), 3 verify found images not fully cached.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitNotFound = 3
)

// usageError marks an error in how the command was called.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// errMissing is returned by verify when something is not cached.
var errMissing = errors.New("not fully cached")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	followParent()
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns its exit code. Errors are
// printed once, on stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot(stdin, stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "pullthrough:", err)
	var u usageError
	switch {
	case errors.As(err, &u), isCobraUsage(err):
		fmt.Fprintln(stderr, "Run 'pullthrough --help' for usage.")
		return exitUsage
	case errors.Is(err, errMissing):
		return exitNotFound
	}
	return exitFailure
}

// isCobraUsage recognises cobra's own errors for unknown commands and flags.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument", "accepts ", "requires at least"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func newRoot(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "pullthrough",
		Short: "Pull-through caches for Talos clusters, kind, k3s, containerd and Docker",
		Long: `pullthrough runs the pull-through caches of Talos's guide (one per upstream registry)
in one process, prints the talosctl command lines that use them, and keeps what they
cached: prefetch, verify and export a list of images; configs for other tools.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newUp(), newDown(), newServe(), newConfig(), newStatus(), newPrefetch(), newVerify(), newExport(), newGC(), newPurge())
	return root
}

// noArgs rejects stray words, which would otherwise hide the flags after them.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q: %q takes flags only (see %s --help)", args[0], cmd.CommandPath(), cmd.CommandPath())
	}
	return nil
}
