Rails.application.routes.draw do
  root "hello#index"
  get "env", to: "hello#env"
  post "echo", to: "hello#echo"
end
