// Command ggufprune makes GGUF language models smaller by removing whole
// transformer blocks chosen by Block Influence (ShortGPT).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// Exit codes. A crash inside llama.cpp exits with llamacpp.ExitCrash (3);
// a signal with 128 + its number (130 for SIGINT).
const (
	exitOK    = 0
	exitError = 1 // the command failed: bad input file, I/O error, llama.cpp error
	exitUsage = 2 // the command line is wrong
)

// usageError marks errors in how the command was called.
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func main() { os.Exit(runMain()) }

// runMain runs the command of the process's arguments. SIGINT, SIGTERM and
// SIGHUP stop it: every temporary file is removed (work inside llama.cpp
// cannot be stopped midway, so the process exits at once) and the exit
// status is 128 + the signal's number.
func runMain() int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	stopping := make(chan struct{})
	go func() {
		sig := <-sigs
		close(stopping)
		cancel()
		removed := atomicfile.Shutdown()
		fmt.Fprintf(os.Stderr, "\nggufprune: %v: stopped (%d temporary files removed)\n", sig, len(removed))
		code := 130
		if s, ok := sig.(syscall.Signal); ok {
			code = 128 + int(s)
		}
		os.Exit(code)
	}()
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	select {
	case <-stopping:
		// The command failed because it was stopped: the signal's exit
		// status, not the failure's, is the one to give.
		select {}
	default:
		return code
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "ggufprune:", err)
	var ue usageError
	if errors.As(err, &ue) || isCLIUsageError(err) {
		return exitUsage
	}
	return exitError
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "ggufprune",
		Usage: "remove redundant transformer blocks from GGUF models (ShortGPT Block Influence)",
		Description: "Scores every block of a GGUF model on calibration text with llama.cpp, removes the blocks\n" +
			"whose output is most like their input, and writes a smaller GGUF that llama.cpp loads.\n" +
			"Exit status: 0 success, 1 failure, 2 usage error.",
		Writer:               stdout,
		ErrWriter:            stderr,
		HideHelpCommand:      true,
		EnableBashCompletion: false,
		// Errors are printed and turned into exit codes by run, never by cli.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("unknown command %q (see ggufprune --help)", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		Commands: []*cli.Command{
			inspectCommand(),
			pruneCommand(),
			scoreCommand(),
			evalCommand(),
			quantizeCommand(),
			frontierCommand(),
		},
	}
}

// isCLIUsageError recognises cli's own complaints about flags and arguments.
func isCLIUsageError(err error) bool {
	var exit cli.ExitCoder
	return errors.As(err, &exit) && exit.ExitCode() == exitUsage
}

// commandUsageErrors makes a command report flag errors as usage errors.
func commandUsageErrors(c *cli.Command) *cli.Command {
	c.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return usageError{err} }
	return c
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether w is a terminal, for progress output.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// requireFlags makes missing flags a usage error (exit status 2).
func requireFlags(c *cli.Context, names ...string) error {
	for _, n := range names {
		if !c.IsSet(n) {
			return usagef("%s: the flag -%s is required (see ggufprune %s --help)", c.Command.Name, flagName(c, n), c.Command.Name)
		}
	}
	return nil
}

// flagName is the short name of a flag when it has one.
func flagName(c *cli.Context, name string) string {
	for _, f := range c.Command.Flags {
		names := f.Names()
		if names[0] == name {
			for _, a := range names[1:] {
				if len(a) < len(name) {
					return a
				}
			}
		}
	}
	return "-" + name
}

// oneArg returns the single positional argument a command takes.
func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", usagef("%s: expected one %s, got %d arguments", c.Command.Name, what, c.NArg())
	}
	return c.Args().First(), nil
}
