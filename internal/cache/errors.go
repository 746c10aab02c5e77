package cache

import (
	"encoding/json"
	"net/http"
)

// writeRegistryError answers in the registry API's error format, so that
// containerd and go-containerregistry show the message to the user.
func writeRegistryError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"errors": []map[string]string{{"code": code, "message": msg}},
	})
}
