package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cachetest"
)

func newExport() *cobra.Command {
	var f cacheFlags
	var l listFlags
	var dir string
	cmd := &cobra.Command{
		Use:   "export --oci DIR [REFERENCE...]",
		Short: "Write a list's cached images to an OCI image layout",
		Long: `export reads every image of a list from the caches' storage alone (strict mode: nothing is
asked of any upstream) and writes it to an OCI image layout, each image annotated with its
reference (org.opencontainers.image.ref.name), for skopeo, crane, containerd's ctr import or an
air-gapped registry.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return usagef("--oci DIR is required")
			}
			set, imgs, err := listCaches(cmd, &f, &l, args, cachetest.Strict)
			if err != nil {
				return err
			}
			defer set.Close()
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			p, err := layout.FromPath(dir)
			if err != nil {
				if p, err = layout.Write(dir, empty.Index); err != nil {
					return fmt.Errorf("creating the OCI layout %s: %w", dir, err)
				}
			}
			res := pullAll(cmd.Context(), set, imgs, l.platform, newProgress(cmd.ErrOrStderr(), len(imgs)))
			var errs []error
			for _, r := range res {
				if r.err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", r.img.ref, r.err))
					continue
				}
				for _, im := range r.imgs {
					if err := p.AppendImage(im, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": r.img.ref})); err != nil {
						errs = append(errs, fmt.Errorf("writing %s: %w", r.img.ref, err))
					}
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("%w: %w", errMissing, errors.Join(errs...))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %d images to %s\n", len(imgs), dir)
			return nil
		},
	}
	f.register(cmd)
	l.register(cmd)
	cmd.Flags().StringVar(&dir, "oci", "", "directory of the OCI image layout to write (created or appended to)")
	return cmd
}
