# A Sinatra app with a Gemfile: it runs inside its bundle, as under `bundle exec`.
require "sinatra/base"

class Bundled < Sinatra::Base
  get "/" do
    "hello from a bundle\n"
  end

  # a gem outside the Gemfile cannot be loaded inside the bundle
  get "/outside" do
    begin
      require "webrick"
      "webrick loaded\n"
    rescue LoadError
      "webrick is not in the bundle\n"
    end
  end
end

run Bundled
