package cache

import (
	"reflect"
	"unsafe"

	"github.com/distribution/distribution/v3/registry/handlers"
)

// closeEvents stops the notification broadcaster that handlers.NewApp starts
// and App.Shutdown leaves running: one goroutine per cache would otherwise
// outlive Close. The field is unexported, so it is reached by reflection; if
// a later distribution renames it, this does nothing and the goroutine stays.
func closeEvents(app *handlers.App) {
	v := reflect.ValueOf(app).Elem().FieldByName("events")
	if !v.IsValid() {
		return
	}
	sink := v.FieldByName("sink")
	if !sink.IsValid() || sink.Kind() != reflect.Interface || sink.IsNil() {
		return
	}
	s := reflect.NewAt(sink.Type(), unsafe.Pointer(sink.UnsafeAddr())).Elem().Interface()
	if c, ok := s.(interface{ Close() error }); ok {
		_ = c.Close()
	}
}
