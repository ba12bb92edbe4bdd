# A classic Sinatra app, unchanged from how one would write it for rackup or Passenger.
require "sinatra/base"
require "json"

class Hello < Sinatra::Base
  get "/" do
    "hello from sinatra\n"
  end

  get "/env" do
    content_type :json
    JSON.generate("script_name" => request.script_name, "path_info" => request.path_info,
                  "url" => url("/x"), "environment" => settings.environment.to_s, "ip" => request.ip)
  end

  post "/form" do
    "name=#{params['name']}\n"
  end
end

run Hello
