//! `cargo xtask run` with no arguments: the v2 edge in one lab. Two POPs (sa, eu) announce the
//! same VIP over BGP (with BFD) to two ISPs' BIRD routers on an exchange; each ISP prefers its
//! nearest POP, so clients in eight countries land there; the POPs forward over the 6PN
//! WireGuard mesh their agents build from the shared state's rows to backend hosts in four
//! regions; health checks and `.internal` DNS run from the same state. One screen shows it all
//! and keys act on it (kill a backend or a POP, drain a POP, restore), each act timed.
//!
//! With a terminal it is a full-screen TUI (ratatui); without one (tests, `| tee`), frames are
//! printed as text once a second and acts are read from stdin, one command a line.

mod events;
mod observe;
mod plan;
mod probe;
mod screen;
mod state;
mod world;

use std::{
    io::{BufRead as _, IsTerminal as _},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use ratatui::{backend::TestBackend, Terminal};

use self::{
    events::{Act, Event},
    observe::Observed,
    probe::Samplers,
    screen::Model,
    world::World,
};
use crate::shell;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const TICK: Duration = Duration::from_millis(100);

pub fn run(agent: &Path, duration: Option<Duration>) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            libc::signal(signal, request_stop as *const () as libc::sighandler_t);
        }
    }
    if std::env::var_os("CORROSION_BIN").is_some() {
        println!(
            "note: CORROSION_BIN is set, but this lab shares its state through one SQLite file (the agents' default source); docs/corrosion.md has the Corrosion lab"
        );
    }
    let echo_server = shell::debug_bin("echo-server")?;
    let started = Instant::now();
    let lab = world::topology().up().context("bringing up the demo lab")?;
    let run_id = lab.run_id().to_string();
    println!("lab run id: {run_id}");
    println!("starting: 2 BIRD routers, 6 agents (2 POPs, 4 backend hosts), 4 backends ...");
    let result = World::start(lab, agent, &echo_server).and_then(|mut world| {
        let samplers = Samplers::start(&world.lab)?;
        let result = drive(&mut world, &samplers, &run_id, started, duration);
        samplers.stop();
        println!("stopping: agents, routers, backends, then the lab");
        drop(world);
        result
    });
    let left = edge_tests::find_leftovers(Some(&run_id));
    if !left.is_empty() {
        bail!("the lab left objects behind:\n{left}");
    }
    println!("lab removed; nothing left behind");
    result
}

/// The screen's loop until Ctrl-C, `q` or the duration.
fn drive(
    world: &mut World,
    samplers: &Samplers,
    run_id: &str,
    started: Instant,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let tui = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let mut terminal = if tui { Some(ratatui::init()) } else { None };
    let result = screen_loop(
        world,
        samplers,
        run_id,
        started,
        duration,
        terminal.as_mut(),
    );
    if terminal.is_some() {
        ratatui::restore();
    }
    result
}

/// Commands from stdin (text mode), parsed on their own thread.
fn stdin_commands() -> mpsc::Receiver<Result<Act, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line.trim().is_empty() {
                continue;
            }
            if tx.send(Act::parse(&line)).is_err() {
                break;
            }
        }
    });
    rx
}

fn screen_loop(
    world: &mut World,
    samplers: &Samplers,
    run_id: &str,
    started: Instant,
    duration: Option<Duration>,
    mut terminal: Option<&mut ratatui::DefaultTerminal>,
) -> anyhow::Result<()> {
    let commands = terminal.is_none().then(stdin_commands);
    if terminal.is_none() {
        println!("{}", events::COMMANDS);
    }
    let run_started = Instant::now();
    let mut observed = Observed::default();
    let mut events: Vec<Event> = Vec::new();
    // The world is ready when every route and every client is where it belongs: timed like an
    // act ("restore") from the moment the lab started.
    let mut ready = {
        let seen = lock(samplers)?;
        let mut e = Event::new(Act::Restore, &seen);
        e.at = started;
        e
    };
    let mut world_up_secs = 0.0;
    let mut message = String::new();
    let mut last_text = None::<Instant>;
    let mut frame = 0u64;
    while !STOP.load(Ordering::SeqCst) && duration.is_none_or(|d| run_started.elapsed() < d) {
        let tick = Instant::now();
        let mut acts = Vec::new();
        if terminal.is_some() {
            while ratatui::crossterm::event::poll(Duration::ZERO)? {
                if let Some(key) = key_of(ratatui::crossterm::event::read()?) {
                    match key {
                        Key::Quit => STOP.store(true, Ordering::SeqCst),
                        Key::Act(a) => acts.push(a),
                        Key::Other(c) => message = format!("no act for key {c:?}"),
                    }
                }
            }
        }
        if let Some(rx) = &commands {
            for command in rx.try_iter() {
                match command {
                    Ok(a) => acts.push(a),
                    Err(e) => println!("{e}"),
                }
            }
        }
        for act in acts {
            let mut event = Event::new(act, &*lock(samplers)?);
            message = format!("{} ...", act.describe());
            if let Err(e) = perform(world, act) {
                event.error = Some(format!("{e:#}"));
            }
            if terminal.is_none() {
                println!("act: {}", act.describe());
            }
            events.push(event);
        }
        observed.refresh(world);
        {
            let seen = lock(samplers)?;
            if world_up_secs == 0.0 && !ready.update(&seen, &observed).is_empty() && ready.done() {
                world_up_secs = started.elapsed().as_secs_f64();
                let line = format!(
                    "world ready in {world_up_secs:.1} s (lab up, agents ready, routes and every client where it belongs)"
                );
                message = line.clone();
                if terminal.is_none() {
                    println!("{line}");
                }
            }
            for e in &mut events {
                if !e.update(&seen, &observed).is_empty() && e.done() {
                    message = format!("done: {}", e.act.describe());
                    if terminal.is_none() {
                        println!("event: {}", e.summary());
                    }
                }
            }
        }
        if let Some(crashed) = world.crashed() {
            bail!("{crashed}");
        }
        let seen = lock(samplers)?;
        let model = Model {
            run_id,
            started,
            world_up_secs,
            state_source: "one SQLite routing.db, all agents",
            seen: &seen,
            observed: &observed,
            events: &events,
            backend_running: world.backends.iter().map(Option::is_some).collect(),
            pop_running: world.pop_agents.iter().map(Option::is_some).collect(),
            drained: world.drained.clone(),
            message: &message,
        };
        match terminal.as_deref_mut() {
            Some(t) => {
                t.draw(|f| screen::draw(f, &model))?;
            }
            None if last_text.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) => {
                last_text = Some(Instant::now());
                frame += 1;
                print_text_frame(frame, &model)?;
            }
            None => {}
        }
        drop(seen);
        std::thread::sleep(TICK.saturating_sub(tick.elapsed()));
    }
    Ok(())
}

fn lock(samplers: &Samplers) -> anyhow::Result<std::sync::MutexGuard<'_, probe::Seen>> {
    samplers
        .seen
        .lock()
        .map_err(|_| anyhow::anyhow!("a sampler thread panicked"))
}

fn perform(world: &mut World, act: Act) -> anyhow::Result<()> {
    match act {
        Act::KillBackend(b) => world.kill_backend(b),
        Act::KillPop(p) => world.kill_pop(p),
        Act::DrainPop(p) => world.drain_pop(p),
        Act::Restore => world.restore().map(|_| ()),
    }
}

enum Key {
    Quit,
    Act(Act),
    Other(char),
}

fn key_of(event: ratatui::crossterm::event::Event) -> Option<Key> {
    use ratatui::crossterm::event::{Event as Ev, KeyCode, KeyEventKind, KeyModifiers};
    let Ev::Key(key) = event else {
        return None;
    };
    if key.kind != KeyEventKind::Press {
        return None;
    }
    match key.code {
        // Raw mode turns Ctrl-C into a key rather than SIGINT.
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(Key::Quit),
        KeyCode::Char('q') | KeyCode::Esc => Some(Key::Quit),
        KeyCode::Char(c) => Some(Act::from_key(c).map_or(Key::Other(c), Key::Act)),
        _ => None,
    }
}

/// Text mode: the frame as text, and one `landed:` line a test can read.
fn print_text_frame(n: u64, model: &Model) -> anyhow::Result<()> {
    let mut terminal = Terminal::new(TestBackend::new(screen::WIDTH, screen::HEIGHT))?;
    terminal.draw(|f| screen::draw(f, model))?;
    let text = screen::buffer_text(terminal.backend().buffer());
    println!("=== frame {n} ===\n{text}");
    let landed: Vec<String> = plan::CLIENTS
        .iter()
        .zip(&model.seen.clients)
        .map(|(c, seen)| match &seen.last {
            Some((_, probe::Outcome::Ok { backend, pop, .. })) => format!(
                "{} {} {}",
                c.country,
                pop.map_or("?", |p| plan::POPS[p].id),
                backend
            ),
            _ => format!("{} - -", c.country),
        })
        .collect();
    println!("landed: {}", landed.join("; "));
    Ok(())
}
