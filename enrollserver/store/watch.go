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

// RevocationWatcher is implemented by stores that several servers share: it
// reports certificate revocations recorded by any server, so each can
// re-sign the CRL it publishes at once.
type RevocationWatcher interface {
	// WatchRevocations calls fn for every revocation recorded after the
	// call began, by any client, in commit order, until ctx ends. It
	// returns ctx.Err() then.
	WatchRevocations(ctx context.Context, fn func(*Revocation)) error
}
