// Command enrollctl is the operator and factory-line CLI for enrolld's
// admin API. It authenticates with an operator certificate; enrolld writes
// the first one (role admin) into <data-dir>/admin on its first start, and
// `enrollctl operators issue` makes more.
//
// Settings come from flags, then the environment (ENROLLCTL_SERVER,
// ENROLLCTL_ADMIN_DIR, ENROLLCTL_OUTPUT), then the config file
// ($XDG_CONFIG_HOME/enrollctl/config.yaml, or ~/.config/enrollctl/config.yaml;
// --config names another), then the defaults.
//
// Exit codes:
//
//	0  success
//	1  failure not covered below (the message says what to fix)
//	2  usage: unknown command or flag, bad arguments
//	3  unavailable: enrolld unreachable, busy or failing; retry later
//	4  not authorised: no or unreadable credential, or the role lacks the right
//	5  invalid input: the request or import rows were refused (each is reported)
//	6  not found: no such device, group, version or import
//	7  conflict: the state does not allow it (for example, a serial that belongs
//	   to another TPM, or approving a revoked device)
//	8  partly done: import --partial skipped rows, or an action changed some
//	   devices and refused others
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := rootCmd()
	err := root.ExecuteContext(ctx)
	code := exitCode(err)
	if err != nil {
		var ee *exitError
		if !errors.As(err, &ee) || !ee.silent {
			fmt.Fprintf(os.Stderr, "enrollctl: %v\n", err)
		}
		if code == exitUsage {
			fmt.Fprintln(os.Stderr, "run 'enrollctl --help' or 'enrollctl <command> --help' for usage")
		}
	}
	os.Exit(code)
}

func rootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "enrollctl",
		Short: "Operate enrolld: factory imports, approvals, revocation, config bundles, audit",
		Long: `enrollctl drives enrolld's admin API over mTLS with an operator certificate.

Roles: admin (everything, issues credentials), operator (approve, deny,
revoke, readmit, groups, config, approved firmware), factory (import,
preregister), viewer (read only).

Settings: --server/ENROLLCTL_SERVER, --admin-dir/ENROLLCTL_ADMIN_DIR,
-o/ENROLLCTL_OUTPUT, or the config file
$XDG_CONFIG_HOME/enrollctl/config.yaml:

  server: https://enroll.example:8443
  admin_dir: /etc/enrollctl/alice
  output: table

Exit codes: 0 ok, 1 failure, 2 usage, 3 unavailable (retry), 4 not
authorised, 5 invalid input, 6 not found, 7 conflict, 8 partly done.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.resolve(cmd)
		},
	}
	g.register(root)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr(err) })
	root.AddCommand(statusCmd(g), devicesCmd(g), preregisterCmd(g), importCmd(g), groupsCmd(g), configCmd(g),
		certsCmd(g), auditCmd(g), operatorsCmd(g), crlCmd(g), firmwareCmd(g))
	// Argument errors are usage errors too.
	var wrap func(c *cobra.Command)
	wrap = func(c *cobra.Command) {
		if c.Args != nil {
			args := c.Args
			c.Args = func(cmd *cobra.Command, a []string) error {
				if err := args(cmd, a); err != nil {
					return usageErr(err)
				}
				return nil
			}
		}
		if c.RunE == nil && c.HasSubCommands() {
			c.RunE = func(cmd *cobra.Command, a []string) error {
				if len(a) > 0 {
					return usageErr(fmt.Errorf("unknown command %q for %q", a[0], cmd.CommandPath()))
				}
				return usageErr(fmt.Errorf("%s needs a subcommand", cmd.CommandPath()))
			}
			c.Args = cobra.ArbitraryArgs
		}
		for _, sub := range c.Commands() {
			wrap(sub)
		}
	}
	wrap(root)
	return root
}
