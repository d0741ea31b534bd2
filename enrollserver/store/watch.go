package store

import "context"

// ConfigWatcher is implemented by stores that several servers share: it
// reports config versions stored by any server.
type ConfigWatcher interface {
	// WatchConfigs calls fn for every config version stored after the call
	// began, by any client, in commit order, until ctx ends. It returns
	// ctx.Err() then.
	WatchConfigs(ctx context.Context, fn func(*ConfigVersion)) error
}
