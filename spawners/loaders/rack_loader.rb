# passenger-lite Rack loader: serves one Rack app (its config.ru) with Puma on a Unix socket.
#
# Runs inside the app's own Ruby and never loads passenger-lite. It does what `rackup -s puma`
# does (Rack::Builder.parse_file, then a Puma server), minus rackup's development middleware
# (Lint, ShowExceptions, CommonLogger: per-request cost and a rewritten RACK_ENV), plus:
#   * the app's Gemfile is honoured as `bundle exec` would (Bundler.setup); Puma comes from the
#     bundle when the Gemfile lists it, else from the system, loaded before the bundle is set up
#     (Passenger likewise brings its own server instead of asking every Gemfile for one);
#   * a mount prefix moves from PATH_INFO to SCRIPT_NAME (the proxy forwards the full path);
#   * `OPTIONS *` (the manager's readiness probe) is answered without calling the app;
#   * the app's config/puma.rb is ignored: the binding, threads and timeouts are ours.
#
# Environment (set by the manager):
#   PASSENGER_LITE_SOCKET       Unix socket path to bind
#   PASSENGER_LITE_ENTRY        the rackup file (absolute path)
#   PASSENGER_LITE_MOUNT        mount prefix ('' at the root): SCRIPT_NAME
#   PASSENGER_LITE_CONCURRENCY  Puma threads (0: up to 16)
#   BUNDLE_GEMFILE              set when the app has a Gemfile
$stdout.sync = true
$stderr.sync = true

SOCKET = ENV.fetch("PASSENGER_LITE_SOCKET")
ENTRY = ENV.fetch("PASSENGER_LITE_ENTRY")
MOUNT = ENV.fetch("PASSENGER_LITE_MOUNT", "")
CONCURRENCY = Integer(ENV.fetch("PASSENGER_LITE_CONCURRENCY", "1"))

def fail_start(message)
  $stderr.puts "passenger-lite rack loader: #{message}"
  exit 1
end

def puma_in_bundle?(gemfile)
  lock = ["#{gemfile}.lock", gemfile.sub(/\.rb\z/, ".locked")].find { |f| f != gemfile && File.file?(f) }
  return File.read(lock) =~ /^    puma \(/ ? true : false if lock
  File.read(gemfile) =~ /^\s*gem\s+["']puma["']/ ? true : false
rescue SystemCallError
  false
end

def load_puma
  require "puma"
  require "puma/configuration"
  require "puma/events"
  require "puma/launcher"
  require "puma/server"
  require "puma/single"
  require "puma/reactor"
  require "nio" # Puma requires these lazily; under a bundle without Puma they would be out of reach
  require "puma/log_writer" if Gem::Version.new(Puma::Const::PUMA_VERSION) >= Gem::Version.new("6")
rescue LoadError => e
  fail_start("Puma is not available (#{e.message}). Install it (Debian: apt-get install puma), " \
             "or add `gem \"puma\"` to the app's Gemfile.")
end

gemfile = ENV["BUNDLE_GEMFILE"]
if gemfile && !gemfile.empty?
  load_puma unless puma_in_bundle?(gemfile)
  begin
    require "bundler/setup"
  rescue LoadError, StandardError => e  # Bundler::GemNotFound and friends
    fail_start("Bundler could not set up the gems of #{gemfile}: #{e.class}: #{e.message}\n" \
               "Install the missing gems (Debian: apt-get install ruby-<gem>; offline, `bundle install --local`).")
  end
end
load_puma unless defined?(Puma::Launcher)

begin
  require "rack"
  require "rack/builder"
rescue LoadError => e
  fail_start("Rack is not available (#{e.message}). Install it (Debian: apt-get install ruby-rack)" \
             "#{gemfile ? ', and list it in the Gemfile' : ''}.")
end

# Answers the readiness probe, takes the client's address from X-Real-IP (set by the front
# process; Puma reports 127.0.0.1 on a Unix socket) and moves the mount prefix into SCRIPT_NAME.
# A few comparisons per request; nothing is allocated on the common path.
class PassengerLiteFront
  OPTIONS = "OPTIONS"
  STAR = "*"
  PROBE_RESPONSE = [200, { "content-length" => "0" }.freeze, [].freeze].freeze

  def initialize(app, mount)
    @app = app
    @mount = mount.freeze
    @mount_size = mount.bytesize
  end

  def call(env)
    path = env["PATH_INFO"]
    return PROBE_RESPONSE if path == STAR && env["REQUEST_METHOD"] == OPTIONS
    ip = env["HTTP_X_REAL_IP"]
    env["REMOTE_ADDR"] = ip if ip
    if @mount_size > 0 && path.start_with?(@mount) &&
       (path.bytesize == @mount_size || path.getbyte(@mount_size) == 47) # "/"
      env["SCRIPT_NAME"] = @mount
      env["PATH_INFO"] = path.byteslice(@mount_size, path.bytesize - @mount_size)
    end
    @app.call(env)
  end
end

begin
  parsed = Rack::Builder.parse_file(ENTRY)
rescue LoadError, StandardError, ScriptError => e
  $stderr.puts "passenger-lite rack loader: loading #{ENTRY} failed: #{e.class}: #{e.message}"
  $stderr.puts e.backtrace.first(15).map { |l| "  #{l}" }
  exit 1
end
app = parsed.is_a?(Array) ? parsed.first : parsed # Rack 2 returns [app, options]
app = PassengerLiteFront.new(app, MOUNT)

threads = CONCURRENCY > 0 ? CONCURRENCY : 16
conf = Puma::Configuration.new({ config_files: ["-"] }) do |c|
  c.bind "unix://#{SOCKET}"
  c.threads(CONCURRENCY > 0 ? threads : 0, threads)
  c.workers 0                           # one process; passenger-lite runs more of them
  c.environment ENV["RACK_ENV"] if ENV["RACK_ENV"]
  c.persistent_timeout 86_400           # the front process owns keep-alive timing
  c.raise_exception_on_sigterm false    # SIGTERM: finish the requests, then exit 0
  c.tag "passenger-lite #{ENV['PASSENGER_LITE_APP']}"
  c.app app
end

devnull = File.open(File::NULL, "w")
launcher =
  if defined?(Puma::LogWriter) # Puma 6
    Puma::Launcher.new(conf, log_writer: Puma::LogWriter.new(devnull, $stderr), events: Puma::Events.new)
  else
    Puma::Launcher.new(conf, events: Puma::Events.new(devnull, $stderr))
  end
puts "rack loader: #{File.basename(ENTRY)} on Ruby #{RUBY_VERSION}, Rack #{Rack.release}, " \
     "Puma #{Puma::Const::PUMA_VERSION}, #{threads} thread#{threads == 1 ? '' : 's'}" \
     "#{MOUNT.empty? ? '' : ", mounted at #{MOUNT}"}#{defined?(Bundler) ? ', bundled' : ''}"
launcher.run
