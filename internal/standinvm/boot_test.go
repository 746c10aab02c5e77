package standinvm_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/internal/standinvm"
)

func TestConfigURLIsReadLikeTalosReadsIt(t *testing.T) {
	u, err := standinvm.ConfigURL("console=ttyS0 panic=1 talos.platform=metal talos.config=http://10.5.0.1:34567/config.yaml quiet")
	require.NoError(t, err)
	assert.Equal(t, "http://10.5.0.1:34567/config.yaml", u)

	_, err = standinvm.ConfigURL("console=ttyS0 talos.platform=metal")
	assert.ErrorContains(t, err, "kernel command line has no talos.config= argument")
	_, err = standinvm.ConfigURL("talos.config=metal-iso")
	assert.ErrorContains(t, err, `talos.config="metal-iso": the stand-in VM fetches its config over HTTP only`)
}

// Boot stops at the first missing piece and names it; before the network
// it needs neither root nor a VM.
func TestBootNamesWhatIsMissing(t *testing.T) {
	ctx := context.Background()
	err := standinvm.Boot(ctx, io.Discard, standinvm.Options{Cmdline: "console=ttyS0"})
	assert.ErrorContains(t, err, "no talos.config=")

	err = standinvm.Boot(ctx, io.Discard, standinvm.Options{Cmdline: "talos.config=http://127.0.0.1:1/c", ModulesDir: t.TempDir()})
	assert.ErrorContains(t, err, "reading the module load order")

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, standinvm.LoadOrderFile), []byte("# none\n\n"), 0o644))
	err = standinvm.Boot(ctx, io.Discard, standinvm.Options{
		Cmdline: "talos.config=http://127.0.0.1:1/c", ModulesDir: dir,
		Interface: "pt-no-such-nic", NetTimeout: 300 * time.Millisecond,
	})
	assert.ErrorContains(t, err, "waiting for network interface pt-no-such-nic")
}

// The config server may answer late (the launcher starts it as the VM
// boots): fetching retries until it answers.
func TestFetchConfigRetriesUntilTheServerAnswers(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls < 3 {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("version: v1alpha1\n"))
	}))
	defer srv.Close()
	b, err := standinvm.FetchConfig(context.Background(), srv.URL+"/config.yaml")
	require.NoError(t, err)
	assert.Equal(t, "version: v1alpha1\n", string(b))
	assert.Equal(t, 3, calls)

	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err = standinvm.FetchConfig(ctx, "http://127.0.0.1:1/config.yaml")
	assert.ErrorContains(t, err, "fetching the machine config from http://127.0.0.1:1/config.yaml")
}
